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
    """``train.val_within``: the validation cells grouped so that each partner is ranked among its group's cells.

    ``auto``: by dataset on a store pooled from several datasets, whatever ``train.batch_key`` is (so batch
    settings compare under one score), else not grouped: ranked among every lab's cells, another lab's cell that a
    shared space rightly puts near the partner would count as an error. ``true``: by the ``train.batch_key``
    column when one is set (e.g. ``batch``), else by dataset on a pooled store. ``false``: among all validation
    cells. Returns group name -> positions in ``val_rows``, or ``None`` (not grouped).

    Groups with fewer than two validation cells are left out of the score (named in a warning).
    """
    within = train["val_within"]
    if within is False:
        return None
    key = _group_key(info, "auto")  # the dataset column of a pooled store, else ""
    if within is True:
        key = key if train["batch_key"] in ("auto", "") else train["batch_key"]
        if not key:
            raise InputError("train.val_within=true needs groups: set train.batch_key to an obs column, or train "
                             "on a pooled store (omicsclip pool)")
    if not key:
        return None
    codes, uniques = _group_codes(info, val_rows, key, "train.batch_key", "validation")
    groups = {str(u): torch.from_numpy(np.flatnonzero(codes == i)).to(device) for i, u in enumerate(uniques)}
    small = sorted(k for k, g in groups.items() if g.numel() < 2)
    if len(small) == len(groups):
        if within is True:
            raise InputError(f"train.val_within=true: no {key} has two validation cells to rank within; set "
                             f"train.val_within=false")
        log.warning("train.val_within: no %s has two validation cells; ranking partners among all of them", key)
        return None
    if small:
        log.warning("train.val_within: %s with fewer than two validation cells, left out of the validation "
                    "score: %s", key, ", ".join(small))
    if train.get("monitor") == "recall_at_10" and all(g.numel() <= 10 for g in groups.values()):
        raise InputError(f"train.monitor=recall_at_10: no {key} has more than 10 validation cells, so recall@10 "
                         f"within each is 1 whatever the model; use train.monitor=foscttm or train.val_within=false")
    return groups
