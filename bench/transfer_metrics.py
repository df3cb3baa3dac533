"""Metrics of bench/transfer.py: imputed-protein Pearson over a shared sub-panel, label accuracy, OOD AUROC.

numpy + scikit-learn only, so that the totalVI driver (bench/transfer_totalvi.py, run in the scvi-tools venv)
imports the very same functions as the baselines and omicsclip.

Panels of different size compare because both truth and prediction are re-centred over the proteins the pair
shares: the truth is CLR over the shared sub-panel (``log1p`` counts minus each cell's mean over the shared
proteins), the prediction (any log-scale value per protein) minus each cell's mean over the same proteins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

UNKNOWN = "unknown"  # the label both labelled sets use for unannotated cells: never trained on, never scored


def recentre(values: np.ndarray) -> np.ndarray:
    """Subtract each cell's (row's) mean over the given proteins (columns)."""
    v = np.asarray(values, dtype=np.float64)
    return v - v.mean(axis=1, keepdims=True)


def clr_counts(counts: np.ndarray) -> np.ndarray:
    """Return the CLR of raw counts over the given proteins: ``log1p`` minus each cell's mean of it."""
    return recentre(np.log1p(np.asarray(counts, dtype=np.float64)))


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` (NaN for a constant column)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=0) / den
    return np.where(den > 0, r, np.nan)


def protein_pearson(pred_log: np.ndarray, true_counts: np.ndarray, proteins: Sequence[str]) -> dict:
    """Score imputed protein against the truth on the shared proteins.

    Parameters
    ----------
    pred_log
        Query cells x shared proteins, on a log scale (CLR, ``log1p`` of denoised counts, ...); re-centred here.
    true_counts
        Query cells x shared proteins, raw ADT counts; CLR over these columns is the truth.
    proteins
        Names of the columns.

    Returns
    -------
    ``{"per_protein": {name: r}, "mean_pearson": mean over proteins with a defined r}``.
    """
    pred_log = np.asarray(pred_log, dtype=np.float64)
    if pred_log.shape[1] != len(proteins):
        raise ValueError("one column per shared protein expected")
    # a cell none of whose reference neighbours measured a protein (a pooled reference) has no prediction for
    # it: such cells are left out and counted
    rows = np.isfinite(pred_log).all(axis=1)
    r = pearson_columns(recentre(pred_log[rows]), clr_counts(np.asarray(true_counts)[rows]))
    per = {str(p): (None if np.isnan(x) else float(x)) for p, x in zip(proteins, r, strict=True)}
    mean = mean_defined(r)
    return {"per_protein": per, "mean_pearson": None if np.isnan(mean) else mean,
            "n_cells_unpredicted": int((~rows).sum())}


def mean_defined(r: np.ndarray) -> float:
    """Return the mean of the defined (non-NaN) per-protein correlations; NaN when none is."""
    ok = r[~np.isnan(r)]
    return float(ok.mean()) if ok.size else float("nan")


BOOTSTRAP_MIN_CELLS = 10  # fewer cells: resamples of constant columns, no interval worth reporting


def paired_bootstrap(preds: dict[str, np.ndarray], true_counts: np.ndarray, lead: str, n_boot: int = 2000,
                     seed: int = 0) -> dict[str, dict]:
    """How sure is ``lead``'s mean Pearson above each other method's? A paired bootstrap over the query cells.

    Every resample draws the query cells with replacement once and scores every method on the same draw (as
    :func:`protein_pearson`: per-cell re-centred prediction vs the CLR truth, mean over the proteins with a
    defined correlation), so the differences are paired. Cells some method left unpredicted (NaN) are left out
    for every method, so with such a method the difference is over fewer cells than its table row.

    Parameters
    ----------
    preds
        Method -> query cells x shared proteins, on a log scale (the :func:`protein_pearson` input).
    true_counts
        Query cells x shared proteins, raw counts.
    lead
        The method compared with every other one.

    Returns
    -------
    ``{other: {"delta": lead minus other on the ``n_cells`` cells every method predicted, "ci95": [2.5 %, 97.5 %]
    of the resampled differences, "p_lead_above": share of resamples where lead is above, "n_boot", "n_cells"}}``.
    A resample with no defined correlation for a method (every column constant) is left out of the interval.
    """
    if n_boot < 1:
        raise ValueError(f"paired bootstrap: n_boot must be >= 1 (got {n_boot})")
    names = [lead, *(m for m in preds if m != lead)]
    arrays = [np.asarray(preds[m], dtype=np.float64) for m in names]
    rows = np.logical_and.reduce([np.isfinite(a).all(axis=1) for a in arrays])
    truth = clr_counts(np.asarray(true_counts)[rows])
    centred = [recentre(a[rows]) for a in arrays]
    n = int(rows.sum())
    if n < BOOTSTRAP_MIN_CELLS:
        raise ValueError(f"paired bootstrap: {n} query cell(s) with a prediction from every method "
                         f"(at least {BOOTSTRAP_MIN_CELLS} needed)")

    def means(idx: np.ndarray | None) -> np.ndarray:
        t = truth if idx is None else truth[idx]
        return np.array([mean_defined(pearson_columns(c if idx is None else c[idx], t)) for c in centred])

    full = means(None)
    rng = np.random.default_rng(seed)
    boot = np.array([means(rng.integers(0, n, n)) for _ in range(n_boot)])
    out = {}
    for j, other in enumerate(names[1:], start=1):
        diff = boot[:, 0] - boot[:, j]
        diff = diff[~np.isnan(diff)]
        out[other] = {"delta": float(full[0] - full[j]), "ci95": [float(np.quantile(diff, 0.025)),
                                                                   float(np.quantile(diff, 0.975))],
                      "p_lead_above": float((diff > 0).mean()), "n_boot": int(diff.size), "n_cells": n}
    return out


def label_accuracy(pred: Sequence[str], truth: Sequence[str], shared_labels: Sequence[str]) -> dict:
    """Return the accuracy on the query cells whose true label is one of ``shared_labels`` (never ``unknown``)."""
    pred = np.asarray(pred, dtype=object).astype(str)
    truth = np.asarray(truth, dtype=object).astype(str)
    keep = np.isin(truth, [s for s in shared_labels if s != UNKNOWN])
    if not keep.any():
        return {"accuracy": None, "n_scored": 0}
    return {"accuracy": float((pred[keep] == truth[keep]).mean()), "n_scored": int(keep.sum())}


def ood_auroc(score: np.ndarray, is_removed: np.ndarray) -> float | None:
    """Return the AUROC of flagging the removed type: ``roc_auc_score(is_removed, -score)``.

    ``score`` is per query cell, high = looks like the reference (e.g. ``mapping_score``); ``None`` when the
    query holds only one of the two classes.
    """
    from sklearn.metrics import roc_auc_score

    is_removed = np.asarray(is_removed, dtype=bool)
    if is_removed.all() or not is_removed.any():
        return None
    return float(roc_auc_score(is_removed, -np.asarray(score, dtype=np.float64)))


def ood_eval(score: np.ndarray, query_labels: Sequence[str], removed_type: str) -> dict:
    """Return the OOD AUROC of ``removed_type`` over the labelled query cells (``unknown`` ones left out)."""
    lab = np.asarray(query_labels, dtype=object).astype(str)
    keep = known_labels(lab)
    is_removed = lab == removed_type
    return {"removed_type": removed_type, "auroc": ood_auroc(np.asarray(score)[keep], is_removed[keep]),
            "n_removed": int(is_removed.sum()), "n_scored": int(keep.sum())}


def fit_knn_classifier(x: np.ndarray, y: Sequence[str], seed: int, ks: Sequence[int] = (5, 10, 15, 30, 50)):
    """Return a kNN classifier whose k is chosen by 5-fold CV on the reference cells ``x`` only."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    y = np.asarray(y, dtype=object).astype(str)
    n_min = int(np.unique(y, return_counts=True)[1].min())
    folds = max(2, min(5, n_min))
    ks = [k for k in ks if k < len(y) * (folds - 1) / folds] or [1]
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed) if n_min >= 2 else folds
    grid = GridSearchCV(KNeighborsClassifier(), {"n_neighbors": ks}, cv=cv, n_jobs=1)
    with np.errstate(all="ignore"):
        grid.fit(x, y)
    return grid.best_estimator_


def known_labels(labels: Sequence[str]) -> np.ndarray:
    """Return the mask of labelled cells (not missing, not ``unknown``)."""
    lab = np.asarray(labels, dtype=object)
    return np.array([v is not None and v == v and str(v) != UNKNOWN for v in lab], dtype=bool)
