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
