"""Value checks on count chunks: finite, non-negative, integer (raw counts) unless normalised input is allowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.errors import InputError


def _where(mat: sp.csr_matrix, k: int, barcodes: pd.Index, features: pd.Index) -> str:
    """Cell and feature of the ``k``-th stored value of ``mat``."""
    row = int(np.searchsorted(mat.indptr, k, side="right") - 1)
    col = int(mat.indices[k])
    return f"cell {str(barcodes[row])!r}, feature {str(features[col])!r}"


def _all_integer(data: np.ndarray, block: int = 1 << 18) -> bool:
    """``rint(x) == x`` everywhere, in cache-sized slices (about twice as fast as one big pass)."""
    for i in range(0, len(data), block):
        b = data[i:i + block]
        if not np.array_equal(np.rint(b), b):
            return False
    return True


def check_counts(mat: sp.csr_matrix, *, path: Path | str, what: str, barcodes: pd.Index,
                 features: pd.Index, allow_normalized: bool, integer: bool = False) -> None:
    """Raise :class:`InputError` on NaN/inf, negative or (unless ``allow_normalized``) non-integer values.

    Parameters
    ----------
    mat
        A chunk of cells (rows, named by ``barcodes``) x features (columns, named by ``features``).
    path, what
        File and modality named in the message, e.g. ``"RNA"``.
    allow_normalized
        Accept non-integer values (already normalised input); NaN/inf and negatives are still errors.
    integer
        The values were stored as integers: only negatives are possible.
    """
    data = mat.data
    if data.size == 0:
        return
    lo, hi = data.min(), data.max()  # NaN propagates; two fast reductions decide the common, clean case
    if np.isfinite(lo) and np.isfinite(hi) and lo >= 0:
        if allow_normalized or integer or _all_integer(data):
            return
    bad = ~np.isfinite(data)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: {what} counts contain {int(bad.sum())} NaN/inf values in this chunk "
                         f"(first at {_where(mat, k, barcodes, features)})")
    neg = data < 0
    if neg.any():
        k = int(np.flatnonzero(neg)[0])
        raise InputError(f"{path}: {what} counts contain {int(neg.sum())} negative values in this chunk "
                         f"(first {data[k]:g} at {_where(mat, k, barcodes, features)})")
    if not allow_normalized:
        frac = data != np.rint(data)
        if frac.any():
            k = int(np.flatnonzero(frac)[0])
            raise InputError(
                f"{path}: {what} values are not integer counts (e.g. {data[k]:g} at "
                f"{_where(mat, k, barcodes, features)}); raw counts are expected - pass --allow-normalized "
                "to accept normalised input")
