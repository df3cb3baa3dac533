"""Plots of the report's figures for notebook objects (like ``scanpy.pl``); each returns a matplotlib Figure.

The figures are drawn by :mod:`omicsclip.report.plots`, the same functions the HTML report uses. UMAPs of the
embeddings are scanpy's: ``sc.pp.neighbors(adata, use_rep="X_omicsclip_joint"); sc.tl.umap(adata);
sc.pl.umap(adata, color="cell_type")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.api._inputs import ConfigLike, opened, resolve_config
from omicsclip.api.model import OmicsClipModel
from omicsclip.errors import InputError

__all__ = ["imputed_vs_measured", "learning_curves", "metrics", "training_curves"]


def training_curves(model: OmicsClipModel | Mapping[str, OmicsClipModel]) -> Any:
    """Plot training loss and validation retrieval (recall@10, FOSCTTM) per epoch.

    Parameters
    ----------
    model
        A trained model, or ``{label: model}`` to compare several runs (e.g. temperatures).

    Returns
    -------
    matplotlib.figure.Figure
        Three panels: training loss, validation recall@10, validation FOSCTTM.
    """
    from omicsclip.report.plots import training_curves as _plot

    models = model if isinstance(model, Mapping) else {model.path.name: model}
    return _plot({str(label): m.history for label, m in models.items()})


def imputed_vs_measured(result: Any, measured: Any, *, max_proteins: int = 12, config: ConfigLike = None,
                        **options: Any) -> Any:
    """Plot imputed protein (from RNA alone) against the measured protein of the same cells, per protein.

    Parameters
    ----------
    result
        What :meth:`omicsclip.api.Reference.query` returned for RNA-only cells (imputed CLR protein in ``X``).
    measured
        The same cells with their measured protein: a MuData, an AnnData with protein in ``obsm``, an
        ``(rna, prot)`` pair or path(s); matched by barcode and protein name, CLR-normalised.
    max_proteins
        With more proteins, the ``max_proteins / 2`` best- and worst-imputed are shown.
    config
        Reader settings; see :func:`omicsclip.api.train_model`.
    **options
        Reader options, e.g. ``protein_key="adt"``.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per protein with its Pearson r.
    """
    from omicsclip.model.preprocess import clr
    from omicsclip.report.plots import imputation_scatter

    if result.n_vars == 0:
        raise InputError("imputed_vs_measured: the query result has no imputed protein (query RNA-only cells)")
    cfg = resolve_config(config)
    with opened(measured, ingest=cfg["ingest"], require="any", modality="prot", **options) as src:
        if src.proteins is None:
            raise InputError("imputed_vs_measured: the measured data have no protein counts")
        counts = src.read().prot
        barcodes = pd.Index(src.barcodes).astype(str)
        names = list(src.proteins)
    proteins = [p for p in result.var_names.astype(str) if p in set(names)]
    if not proteins:
        raise InputError("imputed_vs_measured: no protein of the result is in the measured data")
    rows = barcodes.get_indexer(pd.Index(result.obs_names.astype(str)))
    if (rows < 0).any():
        raise InputError(f"imputed_vs_measured: {int((rows < 0).sum())} query cells are not in the measured data")
    meas = clr(np.asarray(counts, np.float32)[:, pd.Index(names).get_indexer(proteins)])[rows]
    imp = np.asarray(result[:, proteins].X, np.float32)
    return imputation_scatter(imp, meas, proteins, max_proteins=max_proteins)


def learning_curves(fewlabel: Mapping[str, Any] | str | Path) -> Any:
    """Plot few-label learning curves (accuracy and macro-F1 against labelled cells per class).

    Parameters
    ----------
    fewlabel
        The result of ``omicsclip fewlabel`` (the parsed JSON or its path); the logistic-regression baseline
        is drawn dashed.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per score, one line per method with a ±1 s.d. band.
    """
    from omicsclip.evaluation.fewlabel import BASELINE
    from omicsclip.report.data import fewlabel_curves
    from omicsclip.report.plots import learning_curves as _plot

    if isinstance(fewlabel, str | Path):
        from omicsclip.io.jsonfile import read_json

        fewlabel = read_json(Path(fewlabel))
    return _plot(fewlabel_curves(fewlabel), baselines=(BASELINE,))


def metrics(result: Mapping[str, Any], keys: tuple[str, ...] | None = None) -> Any:
    """Plot held-out metrics of omicsclip and the baselines as grouped bars.

    Parameters
    ----------
    result
        What :func:`omicsclip.api.evaluate` returns (or ``metrics.json`` parsed).
    keys
        Metrics to show (default: every metric the report shows).

    Returns
    -------
    matplotlib.figure.Figure
        Higher-is-better metrics left, lower-is-better right.
    """
    from omicsclip.report.plots import METRIC_LABELS, metrics_bars

    if "methods" not in result:
        raise InputError("metrics: expected the result of evaluate() (a 'methods' mapping)")
    return metrics_bars(result["methods"], list(keys or METRIC_LABELS))
