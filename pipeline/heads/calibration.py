"""Classification quality and calibration: accuracy, macro-F1, expected calibration error (numpy + scikit-learn)."""

from __future__ import annotations

import numpy as np


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin confidence, accuracy and counts of the top-1 prediction, equal-width bins on (0, 1].

    Parameters
    ----------
    probs
        (n, K) class probabilities (rows sum to 1).
    y
        (n,) integer true classes.
    n_bins
        Number of equal-width confidence bins; bin ``b`` holds confidences in ``(b/n_bins, (b+1)/n_bins]``.

    Returns
    -------
    dict with ``confidence`` (mean top-1 probability per bin, NaN when empty), ``accuracy`` (NaN when empty),
    ``count`` (cells per bin) and ``edges`` (n_bins + 1 bin edges).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if probs.ndim != 2 or len(probs) != len(y):
        raise ValueError(f"probs must be (n, K) aligned with y, got {probs.shape} and {y.shape}")
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"confidence": mean_conf, "accuracy": mean_acc, "count": count, "edges": edges}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum_b (n_b / n) |accuracy_b - confidence_b| over equal-width bins of top-1 confidence (Guo et al. 2017).

    Parameters
    ----------
    probs
        (n, K) class probabilities.
    y
        (n,) integer true classes.
    n_bins
        Number of equal-width bins.
    """
    bins = reliability_bins(probs, y, n_bins)
    n = bins["count"].sum()
    if n == 0:
        return float("nan")
    used = bins["count"] > 0
    gap = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float((bins["count"][used] / n * gap).sum())


def classification_metrics(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, macro-F1 (over the classes present in ``y`` or predicted) and ECE of top-1 predictions.

    Parameters
    ----------
    probs
        (n, K) class probabilities.
    y
        (n,) integer true classes.
    n_bins
        ECE bins.
    """
    from sklearn.metrics import f1_score

    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if len(y) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "ece": float("nan"), "n": 0}
    pred = probs.argmax(1)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, y, n_bins),
        "n": int(len(y)),
    }
