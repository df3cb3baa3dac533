"""The train/validation/test split of cells: seeded, stratified by a label column when present.

The split is saved with the model (``split.tsv``) so that every later stage evaluates on the same held-out cells.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from omicsclip.errors import InputError
from omicsclip.io.tsv import read_tsv, to_tsv

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def make_split(
    obs: pd.DataFrame,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    stratify: str = "cell_type",
    group: str | None = None,
) -> pd.Series:
    """Assign every cell to "train", "val" or "test".

    With ``group`` (a store pooled from several datasets: ``dataset``), each group is split on its own, with the
    same seed, exactly as its own store would be: a pooled reference holds out the very cells each dataset's own
    model holds out, so the two are compared on the same test cells and neither trains on the other's.

    Parameters
    ----------
    obs
        Per-cell metadata; its index (barcodes) becomes the index of the result.
    test_fraction, val_fraction
        Fractions of all cells held out for testing and for validation (early stopping).
    seed
        Seed of the permutation; the same seed and obs give the same split.
    stratify
        Column of ``obs`` to stratify on; ignored (with a log message) when absent, ``""`` disables it.
        Missing labels form their own stratum.
    group
        Column of ``obs`` whose groups are split separately (``None``: one group).

    Returns
    -------
    pd.Series
        Categorical-like string Series indexed by barcode, named ``"split"``.
    """
    if group is not None and group in obs.columns:
        parts = [make_split(obs.iloc[np.flatnonzero(obs[group].astype(str).to_numpy() == g)],
                            test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, stratify=stratify)
                 for g in pd.unique(obs[group].astype(str).to_numpy())]
        return pd.concat(parts).reindex(obs.index.astype(str)).rename("split")
    n = len(obs)
    if test_fraction + val_fraction >= 1:
        raise InputError(
            f"split: test_fraction + val_fraction must be < 1 (got {test_fraction} + {val_fraction})"
        )
    if n < 3:
        raise InputError(f"split: need at least 3 cells for train/val/test, got {n}")
    if stratify and stratify in obs.columns:
        strata = obs[stratify].astype(str).fillna("nan").to_numpy()
    else:
        if stratify:
            log.info("split: obs has no column %r; splitting without stratification", stratify)
        strata = np.zeros(n, dtype=object)
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=object)
    # Per stratum: shuffle, then take round(frac * size) for test and val. Leftover rounding error is spread by
    # processing strata in a fixed (sorted) order with a shared RNG, so the result is reproducible.
    for label in sorted(set(strata.tolist())):
        idx = np.flatnonzero(strata == label)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * len(idx)))
        if n_test + n_val >= len(idx):  # tiny stratum: keep at least one training cell
            n_test = min(n_test, max(len(idx) - 1, 0))
            n_val = max(min(n_val, len(idx) - 1 - n_test), 0)
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_val]] = "val"
        out[idx[n_test + n_val :]] = "train"
    split = pd.Series(out, index=obs.index.astype(str), name="split")
    for s in SPLITS:
        if not (split == s).any():
            raise InputError(f"split: no cells assigned to {s!r} ({n} cells; adjust split fractions)")
    return split


def store_split(obs: pd.DataFrame, uns: object, **settings: object) -> pd.Series:
    """Split a store's cells as ``omicsclip train`` does: a pooled store (``omicsclip pool``) dataset by dataset.

    Parameters
    ----------
    obs, uns
        The store's obs and uns (:func:`omicsclip.io.store.store_info`).
    **settings
        The ``split`` config section (:func:`make_split`'s keywords).
    """
    from omicsclip.io.panels import DATASET_COLUMN, panels_of

    return make_split(obs, **settings, group=DATASET_COLUMN if panels_of(uns) is not None else None)


def write_split(split: pd.Series, path: str | Path) -> None:
    """Write ``barcode<TAB>split`` with a header line (escaped by :func:`omicsclip.io.tsv.to_tsv`: one cell a line)."""
    to_tsv(pd.DataFrame({"barcode": split.index.astype(str), "split": split.astype(str).to_numpy()}), path)


def read_split(path: str | Path) -> pd.Series:
    """Read a split written by :func:`write_split` (barcodes exactly as written, whatever characters they hold).

    Raises
    ------
    InputError
        The file is unreadable, has other columns, unknown split labels or a barcode twice (one line).
    """
    path = Path(path)
    try:
        df = read_tsv(path, dtype=str)
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pandas' parser errors are ValueErrors
        raise InputError(f"{path}: cannot read split ({type(exc).__name__}: {_one_line(exc)})") from None
    if list(df.columns) != ["barcode", "split"]:
        raise InputError(f"{path}: expected columns barcode, split; got {_one_line(list(df.columns))}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise InputError(f"{path}: unknown split labels {_one_line(bad)}")
    if df["barcode"].duplicated().any():
        raise InputError(f"{path}: barcode {_one_line(repr(df['barcode'][df['barcode'].duplicated()].iloc[0]))} "
                         f"is listed twice")
    return pd.Series(df["split"].to_numpy(), index=pd.Index(df["barcode"], name=None), name="split")


def _one_line(text: object, limit: int = 120) -> str:
    s = " ".join(str(text).split()).encode("unicode_escape").decode("ascii")
    return s if len(s) <= limit else s[: limit - 3] + "..."
