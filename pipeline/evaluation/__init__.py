"""Evaluation: held-out metrics against baselines, few-label learning curves, choosing a run on validation.

omicsclip is scored against the PCA, CCA and ridge baselines on held-out cells; the few-label curves compare the
fusion heads; a temperature sweep's run is chosen on validation retrieval only.

Layering: this package may import :mod:`omicsclip.index`, :mod:`omicsclip.heads`, :mod:`omicsclip.train`,
:mod:`omicsclip.model` and :mod:`omicsclip.io`; nothing below imports it.

The function :func:`omicsclip.evaluation.evaluate.evaluate` is not re-exported: ``omicsclip.evaluation.evaluate``
stays the module (a function of the same name here would shadow it for ``from omicsclip.evaluation import
evaluate`` and for ``mock.patch``); :func:`run_evaluate` and :func:`evaluate_arrays` are.
"""

from __future__ import annotations

from omicsclip.evaluation.baselines import RIDGE_ALPHAS, CCABaseline, RidgeBaseline, fit_pca, fit_scaler
from omicsclip.evaluation.evaluate import (
    METHODS,
    METRIC_KEYS,
    baseline_pcs,
    evaluate_arrays,
    run_evaluate,
    scaled_gene_rows,
    write_metrics,
)
from omicsclip.evaluation.fewlabel import fewlabel_arrays, markdown_table, robustness_table, run_fewlabel
from omicsclip.evaluation.metrics import (
    MATCH_TEMPERATURE,
    DirectionStats,
    best_match_temperature,
    celltype_match,
    direction_stats,
    fewlabel_accuracy,
    foscttm,
    match_score,
    protein_pearson,
    protein_rmse,
    recall_at_k,
    retrieval_metrics,
)
from omicsclip.evaluation.selection import (
    RunData,
    load_run,
    read_train_log,
    run_label,
    select_best,
    validation_metrics,
    write_selection,
)

__all__ = [
    "MATCH_TEMPERATURE",
    "METHODS",
    "METRIC_KEYS",
    "RIDGE_ALPHAS",
    "baseline_pcs",
    "best_match_temperature",
    "CCABaseline",
    "celltype_match",
    "direction_stats",
    "DirectionStats",
    "evaluate_arrays",
    "fewlabel_accuracy",
    "fewlabel_arrays",
    "fit_pca",
    "fit_scaler",
    "foscttm",
    "load_run",
    "markdown_table",
    "match_score",
    "protein_pearson",
    "protein_rmse",
    "read_train_log",
    "recall_at_k",
    "retrieval_metrics",
    "RidgeBaseline",
    "robustness_table",
    "run_evaluate",
    "run_fewlabel",
    "run_label",
    "RunData",
    "scaled_gene_rows",
    "select_best",
    "validation_metrics",
    "write_metrics",
    "write_selection",
]
