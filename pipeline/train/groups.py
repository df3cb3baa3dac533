"""Groups of cells by ``train.batch_key``: training batches drawn within one group, validation scored within each.

A store pooled from several datasets (``omicsclip pool``) groups by its dataset column under ``auto``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from omicsclip.errors import InputError

log = logging.getLogger(__name__)


def batch_groups(info: dict[str, Any], train_rows: np.ndarray, train: dict[str, Any]) -> np.ndarray | None:
    """Per training cell, its ``train.batch_key`` group code (``None`` when the key is off)."""
    key = _group_key(info, train["batch_key"])
    if not key:
        return None
    codes, uniques = _group_codes(info, train_rows, key, "train.batch_key", "training")
    sizes = np.bincount(codes, minlength=len(uniques))
    small = [f"{u} ({n})" for u, n in zip(uniques, sizes, strict=True) if n < train["batch_size"]]
    if len(small) == len(uniques):
        raise InputError(f"train.batch_key={key!r}: every group has fewer training cells than "
                         f"train.batch_size={train['batch_size']}; lower it")
    if small:
        log.warning("train.batch_key=%s: groups smaller than one batch are never trained on: %s", key,
                    ", ".join(small))
    log.info("training batches drawn within one %s each (%d groups)", key, len(uniques))
    return codes


def _group_key(info: dict[str, Any], key: str) -> str:
    """Resolve a ``train.batch_key`` value: ``auto`` = the dataset column of a pooled store, else off (``""``)."""
    from omicsclip.io.panels import DATASET_COLUMN, panels_of

    if key == "auto":  # chosen on validation cells (bench/pooled.py): within one dataset for pooled stores
        return DATASET_COLUMN if panels_of(info["uns"]) is not None else ""
    return key


def _group_codes(info: dict[str, Any], rows: np.ndarray, key: str, setting: str,
                 what: str) -> tuple[np.ndarray, pd.Index]:
    """Per cell of ``rows``, the code of its ``key`` value (obs column), and the sorted values."""
    obs = info["obs"]
    if key not in obs.columns:
        raise InputError(f"{setting}={key!r}: the store has no such obs column "
                         f"(columns: {', '.join(map(str, obs.columns[:8]))})")
    values = obs[key].iloc[rows]
    if values.isna().any():
        raise InputError(f"{setting}={key!r}: {int(values.isna().sum())} {what} cells have no value")
    return pd.factorize(values.astype(str), sort=True)


def validation_groups(info: dict[str, Any], val_rows: np.ndarray, train: dict[str, Any],
                       device: torch.device) -> dict[str, torch.Tensor] | None:
    """``train.val_within``: validation cells grouped by the batch key (the dataset of a pooled store), or None.

    ``auto`` groups them whenever there is a batch key (set, or ``auto`` on a pooled store), whether or not the
    training batches could be drawn within groups: the score should not count other labs' cells near a cell's
    partner as errors. ``true`` needs a batch key; ``false`` ranks every partner among all validation cells.
    """
    within = train["val_within"]
    if within is False:
        return None
    key = _group_key(info, train["batch_key"])
    if not key:
        if within is True:
            raise InputError("train.val_within=true needs groups: set train.batch_key to an obs column (or train "
                             "on a pooled store with train.batch_key=auto)")
        return None
    codes, uniques = _group_codes(info, val_rows, key, "train.batch_key", "validation")
    groups = {str(u): torch.from_numpy(np.flatnonzero(codes == i)).to(device) for i, u in enumerate(uniques)}
    if all(g.numel() < 2 for g in groups.values()):
        log.warning("train.val_within: no %s has two validation cells; ranking partners among all of them", key)
        return None
    log.info("validation: partners ranked within each %s (%s)", key,
             ", ".join(f"{k} {v.numel()}" for k, v in groups.items()))
    return groups
