"""Package data: the Snakemake workflow that ``omicsclip demo`` runs and the repository's ``Snakefile`` includes.

``Snakefile`` (the workflow), ``rules/`` (its rules and helper Python), ``envs/`` (the conda environment for
``--sdm conda``) and ``report/`` ship inside the wheel, so an installed ``omicsclip`` runs the same workflow as a
source checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["snakefile"]


def snakefile() -> Path:
    """Path of the packaged ``Snakefile``."""
    return Path(str(files(__name__).joinpath("Snakefile")))
