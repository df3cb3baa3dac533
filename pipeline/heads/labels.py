"""Which cells the heads learn from: labels of an obs column, per-class label draws, the unlabelled pool."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from omicsclip.conventions import label_values
from omicsclip.errors import InputError

log = logging.getLogger(__name__)

_POOL_MAX = 20_000  # unlabelled training cells used by the gated/uncertainty heads (random subset above this)


def label_array(obs: pd.DataFrame, key: str, ignore: tuple[str, ...] | list[str] = (), *,
                source: str = "") -> np.ndarray:
    """Return the labels of ``obs[key]`` as an object array, ``None`` where unlabelled.

    Unlabelled is :func:`omicsclip.conventions.is_unlabelled` (missing, empty, ``nan``, ``NA``, ...) or a value
    listed in ``ignore``.

    Parameters
    ----------
    obs
        Cell annotations.
    key
        The label column; an :class:`~omicsclip.errors.InputError` naming ``source`` when ``obs`` lacks it.
    ignore
        Label values treated as unlabelled too (e.g. ``unknown``).
    source
        The file ``obs`` came from, for the error message.
    """
    if key not in obs.columns:
        cols = ", ".join(map(str, obs.columns)) or "none"
        raise InputError(f"{source}: obs has no label column {key!r} (columns: {cols})")
    return label_values(obs[key].astype(object).to_numpy(), ignore)


def sample_per_class(
    labels: np.ndarray, candidates: np.ndarray, n_per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Return the sorted indices of ``n_per_class`` labelled cells per class drawn among ``candidates``.

    Draws are without replacement; a class with fewer candidate cells contributes all of them (logged).

    Parameters
    ----------
    labels
        (n,) object array, ``None`` = unlabelled (:func:`label_array`).
    candidates
        (n,) bool: cells that may be drawn (e.g. the training split).
    n_per_class
        Cells per class.
    rng
        The draw's random generator.
    """
    picked = []
    cand = np.asarray(candidates, bool) & np.array([lab is not None for lab in labels])
    classes = sorted({labels[i] for i in np.flatnonzero(cand)})
    for c in classes:
        pool = np.flatnonzero(cand & (labels == c))
        if len(pool) < n_per_class:
            log.debug("class %r: only %d candidate cells for %d labels per class", c, len(pool), n_per_class)
        picked.append(rng.choice(pool, size=min(n_per_class, len(pool)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def cap_cells(idx: np.ndarray, labels: np.ndarray, max_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Return at most ``max_cells`` of the cells ``idx``, a class-stratified draw (sorted; ``max_cells=0``: all).

    Every class keeps its share of ``max_cells`` (its fraction of ``idx``, rounded up) and at least
    ``min(its size, 50)`` cells, so rare classes are never thinned away.

    Parameters
    ----------
    idx
        Positions of the labelled cells.
    labels
        (n,) label per cell (indexed by ``idx``).
    max_cells
        The cap (0 = no cap).
    rng
        The draw's random generator.
    """
    idx = np.asarray(idx, np.int64)
    if not max_cells or len(idx) <= max_cells:
        return idx
    lab = np.asarray(labels, dtype=object)[idx]  # one fancy index, not a Python loop over the cells
    picked = []
    for c in sorted(set(lab)):
        pool = idx[lab == c]
        quota = min(len(pool), max(int(np.ceil(max_cells * len(pool) / len(idx))), min(len(pool), 50)))
        picked.append(rng.choice(pool, size=quota, replace=False))
    out = np.sort(np.concatenate(picked))
    log.info("fitting on a class-stratified sample of %d of %d labelled cells (finetune.max_cells=%d)", len(out),
             len(idx), max_cells)
    return out


def unlabelled_pool(split: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """Return the training cells the gated and uncertainty heads see without labels (a seeded subset if many).

    Parameters
    ----------
    split
        (n,) split per cell; ``None`` = every cell is a training cell.
    n
        Number of cells.
    seed
        Seed of the subset drawn above 20,000 cells.
    """
    rows = np.flatnonzero(split == "train") if split is not None else np.arange(n)
    if len(rows) > _POOL_MAX:
        rows = np.sort(np.random.default_rng(seed).choice(rows, _POOL_MAX, replace=False))
    return rows
