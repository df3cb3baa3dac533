"""The report stage: one self-contained ``report.html`` per dataset.

:mod:`~omicsclip.report.data` reads the stage outputs, :mod:`~omicsclip.report.projection` draws the UMAPs,
:mod:`~omicsclip.report.plots` makes the figures and :mod:`~omicsclip.report.render` fills
``templates/report.html.j2``; run folders are read by :mod:`omicsclip.evaluation.selection`.
"""

from __future__ import annotations

from omicsclip.report.data import ReportInputs, fewlabel_curves, imputation_arrays, read_inspect
from omicsclip.report.render import render_report, write_report

__all__ = ["ReportInputs", "fewlabel_curves", "imputation_arrays", "read_inspect", "render_report", "write_report"]
