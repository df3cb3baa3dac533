"""Calibration of the heads and of their predictions, and the classification metrics.

Inverse-temperature fitting and the out-of-bag calibration of the bootstrap-ensemble heads; reliability bins,
expected calibration error, accuracy and macro-F1 of predictions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from omicsclip.heads.ensemble import GatedFusionHead, UncertaintyFusionHead

#: Bounds of a fitted inverse temperature (few cells: never extrapolate far).
BETA_RANGE = (0.25, 4.0)
_CALIBRATE_BLOCK = 4096  # labelled cells per block of out-of-bag predictions in calibrate_out_of_bag()


def fit_inverse_temperature(logits: torch.Tensor, y: torch.Tensor, lo: float = BETA_RANGE[0],
                            hi: float = BETA_RANGE[1]) -> float:
    """Return the ``beta`` in ``[lo, hi]`` that minimises the NLL of ``softmax(beta * logits)`` for classes ``y``.

    The NLL is convex in ``beta``, so a log-spaced grid followed by a finer grid around its minimum finds it.

    Parameters
    ----------
    logits
        (n, K) logits (or log-probabilities).
    y
        (n,) integer classes.
    lo, hi
        Bounds of ``beta``.
    """
    logits, y = logits.detach().double(), y.long()

    def nll(betas: torch.Tensor) -> torch.Tensor:  # one beta at a time: memory stays cells x classes
        return torch.stack([F.cross_entropy(b * logits, y) for b in betas])

    grid = torch.logspace(math.log10(lo), math.log10(hi), 61, dtype=torch.float64)
    i = int(nll(grid).argmin())
    fine = torch.linspace(float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)]), 41, dtype=torch.float64)
    return float(fine[int(nll(fine).argmin())])


@torch.no_grad()
def calibrate_out_of_bag(head: GatedFusionHead | UncertaintyFusionHead, z_rna: torch.Tensor, z_prot: torch.Tensor,
                         y: torch.Tensor, mask: torch.Tensor, mc_samples: int) -> float:
    """Fit a bootstrap-ensemble head's inverse temperature ``beta`` on its out-of-bag predictions, in place.

    The labelled cells (same order as in training) are predicted by the members that did not see them, the way
    the head's ``predict`` makes its fused prediction (``mc_samples``: its MC-dropout passes, where the head uses
    them). With fewer than 2 cells that have an out-of-bag prediction (e.g. one label per class: every bag keeps
    it), ``beta`` stays 1.

    Parameters
    ----------
    head
        A trained gated or uncertainty head (after its ``bootstrap``).
    z_rna, z_prot, mask
        The labelled cells' embeddings and presence mask.
    y
        Their classes.
    mc_samples
        MC-dropout passes of the prediction (``finetune.mc_samples``).

    Returns
    -------
    float
        The fitted ``beta`` (also stored in ``head.beta``).
    """
    head.beta.fill_(1.0)
    oob = head.out_of_bag()  # (members, n)
    if oob is None:
        return 1.0
    has = oob.sum(0) > 0
    if int(has.sum()) < 2:
        return 1.0
    was = head.training
    head.eval()
    blocks = [slice(s, s + _CALIBRATE_BLOCK) for s in range(0, len(y), _CALIBRATE_BLOCK)]
    try:  # in blocks of cells: every cell's prediction is its own; memory stays bounded with many MC passes
        fused = torch.cat([head.oob_fused_log_probs(z_rna[b], z_prot[b], mask[b], oob[:, b], mc_samples)
                           for b in blocks])
    finally:
        head.train(was)
    head.beta.fill_(fit_inverse_temperature(fused[has], y[has]))
    return float(head.beta)


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
