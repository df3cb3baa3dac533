"""Count tables: one cells x features matrix on disk (or in memory), read by cell rows with bounded memory.

Every reader turns its input into one or more tables; :mod:`omicsclip.io.readers` pairs their rows by barcode.
A CSR matrix stored as ``data``/``indices``/``indptr`` arrays (h5ad ``X``, a Cell Ranger ``.h5`` matrix, which is
CSC over barcodes and therefore CSR over cells, a zarr store) is read range by range without loading it whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.errors import InputError
from omicsclip.io.formats import READ_ERRORS, one_line

log = logging.getLogger(__name__)

_GAP = 64  # rows: gaps up to this size are read through rather than split into separate reads


class CountTable:
    """A cells x features matrix read by rows.

    Attributes
    ----------
    path
        The file it comes from (for error messages).
    what
        Human-readable name of the matrix, e.g. ``"X"`` or ``"matrix"``.
    barcodes
        Row names (cell barcodes), unique.
    features
        Column metadata; the index holds the feature names in column order.
    """

    #: values are stored as integers (NaN/inf and fractions impossible; only the sign needs checking)
    integer = False

    def __init__(self, path: Path, what: str, barcodes: pd.Index, features: pd.DataFrame) -> None:
        self.path = Path(path)
        self.what = what
        self.barcodes = pd.Index(barcodes)
        self.features = features

    @property
    def n_rows(self) -> int:
        """Number of rows (cells)."""
        return len(self.barcodes)

    @property
    def n_cols(self) -> int:
        """Number of columns (features)."""
        return len(self.features)

    def _read_range(self, lo: int, hi: int) -> sp.csr_matrix:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_range(self, lo: int, hi: int) -> sp.csr_matrix:
        """Rows ``lo:hi`` as CSR float32; read errors become one-line :class:`InputError`."""
        try:
            m = self._read_range(int(lo), int(hi))
        except InputError:
            raise
        except READ_ERRORS as exc:
            msg = one_line(exc)
            raise InputError(
                f"{self.path}: cannot read {self.what} rows {lo}-{hi} (truncated or corrupt file: {msg})"
            ) from None
        if m.shape != (hi - lo, self.n_cols):
            raise InputError(f"{self.path}: {self.what} rows {lo}-{hi} have shape {m.shape}, "
                             f"expected ({hi - lo}, {self.n_cols})")
        return m

    def read_rows(self, pos: np.ndarray) -> sp.csr_matrix:
        """Rows at positions ``pos`` (any order, unique), in that order."""
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos) == 0:
            return sp.csr_matrix((0, self.n_cols), dtype=np.float32)
        lo, hi = int(pos.min()), int(pos.max()) + 1
        if hi - lo == len(pos) and (len(pos) == 1 or np.all(np.diff(pos) == 1)):
            return self.read_range(lo, hi)
        if hi - lo <= 4 * len(pos) + 1024:
            return self.read_range(lo, hi)[pos - lo]
        s = np.sort(pos)
        groups = np.split(s, np.flatnonzero(np.diff(s) > _GAP) + 1)
        blocks = [self.read_range(g[0], g[-1] + 1)[g - g[0]] for g in groups]
        return sp.vstack(blocks, format="csr")[np.searchsorted(s, pos)]

    def close(self) -> None:
        """Release file handles and temporary files."""


class CsrArraysTable(CountTable):
    """CSR stored as three 1-d arrays (h5py datasets, zarr arrays or numpy/memmap arrays)."""

    def __init__(self, path: Path, what: str, barcodes: pd.Index, features: pd.DataFrame, *,
                 data: Any, indices: Any, indptr: Any, on_close: Callable[[], None] | None = None) -> None:
        super().__init__(path, what, barcodes, features)
        self.integer = bool(np.issubdtype(data.dtype, np.integer))
        small = len(features) < 2**31
        self._data = _converting(data, np.float32)
        self._indices = _converting(indices, np.int32) if small else indices
        try:
            self._indptr = np.asarray(indptr[:], dtype=np.int64)
        except READ_ERRORS as exc:
            raise InputError(f"{path}: cannot read {what}/indptr (truncated or corrupt file: {one_line(exc)})") from None
        self._on_close = on_close
        self.sort_indices = False  # sort column indices within rows (inputs whose rows may be unordered)
        n = self.n_rows
        if len(self._indptr) != n + 1:
            raise InputError(f"{path}: {what} has {len(self._indptr) - 1} rows in indptr but {n} barcodes "
                             "(shape mismatch)")
        nnz = int(data.shape[0])
        if int(indices.shape[0]) != nnz:
            raise InputError(f"{path}: {what} data ({nnz}) and indices ({indices.shape[0]}) differ in length")
        if n and (self._indptr[0] != 0 or self._indptr[-1] != nnz or np.any(np.diff(self._indptr) < 0)):
            raise InputError(f"{path}: {what}/indptr is inconsistent with {nnz} stored values (corrupt file)")

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) values."""
        return int(self._indptr[-1]) if len(self._indptr) else 0

    def _read_range(self, lo: int, hi: int) -> sp.csr_matrix:
        a, b = int(self._indptr[lo]), int(self._indptr[hi])
        data = np.asarray(self._data[a:b], dtype=np.float32)
        indices = np.asarray(self._indices[a:b])
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_cols):
            raise InputError(f"{self.path}: {self.what} has feature indices outside 0..{self.n_cols - 1} "
                             f"in rows {lo}-{hi} (corrupt file or shape mismatch)")
        if indices.dtype != np.int32 and self.n_cols < 2**31:
            indices = indices.astype(np.int32)
        m = sp.csr_matrix((data, indices, self._indptr[lo:hi + 1] - a), shape=(hi - lo, self.n_cols))
        if self.sort_indices:
            m.sort_indices()
        return m

    def close(self) -> None:
        """Release the underlying file, if this table owns one."""
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def _converting(arr: Any, dtype: type) -> Any:
    """Let HDF5 convert while reading (faster than numpy afterwards); other arrays are converted by numpy."""
    if arr.dtype != dtype and type(arr).__module__.startswith("h5py"):
        return arr.astype(dtype)
    return arr


class DenseTable(CountTable):
    """A dense 2-d array (numpy, h5py or zarr) with cells in rows."""

    def __init__(self, path: Path, what: str, barcodes: pd.Index, features: pd.DataFrame, array: Any) -> None:
        super().__init__(path, what, barcodes, features)
        if tuple(array.shape) != (len(barcodes), len(features)):
            raise InputError(f"{path}: {what} has shape {tuple(array.shape)} but {len(barcodes)} barcodes x "
                             f"{len(features)} features (shape mismatch)")
        self._array = array

    def _read_range(self, lo: int, hi: int) -> sp.csr_matrix:
        block = np.asarray(self._array[lo:hi], dtype=np.float32)
        return sp.csr_matrix(block)


class MemoryTable(CountTable):
    """An in-memory sparse matrix (small inputs, or formats that cannot be read by rows)."""

    def __init__(self, path: Path, what: str, barcodes: pd.Index, features: pd.DataFrame,
                 matrix: sp.spmatrix) -> None:
        super().__init__(path, what, barcodes, features)
        if matrix.shape != (len(barcodes), len(features)):
            raise InputError(f"{path}: {what} has shape {matrix.shape} but {len(barcodes)} barcodes x "
                             f"{len(features)} features (shape mismatch)")
        if isinstance(matrix, sp.csr_matrix | sp.csc_matrix | sp.csr_array | sp.csc_array):
            try:  # scipy's conversions trust indptr/indices: a damaged file would crash them (segfault)
                matrix.check_format(full_check=True)
            except (ValueError, TypeError, IndexError) as exc:
                raise InputError(f"{path}: {what} is not a valid sparse matrix (corrupt file: "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
                                 ) from None
        self._m = sp.csr_matrix(matrix, dtype=np.float32)

    def _read_range(self, lo: int, hi: int) -> sp.csr_matrix:
        return self._m[lo:hi]

    def read_rows(self, pos: np.ndarray) -> sp.csr_matrix:
        """Return the rows at positions ``pos``, in that order."""
        return self._m[np.asarray(pos, dtype=np.int64)]


class View:
    """Some columns of a table that form one modality (e.g. the "Antibody Capture" features of a 10x matrix).

    Parameters
    ----------
    table
        The table the columns belong to.
    cols
        Column positions, or ``None`` for all columns.
    features
        Metadata of the selected columns (index = feature names); defaults to the table's.
    """

    def __init__(self, table: CountTable, cols: np.ndarray | None = None,
                 features: pd.DataFrame | None = None) -> None:
        self.table = table
        self.cols = None if cols is None else np.asarray(cols, dtype=np.int64)
        if features is None:
            features = table.features if self.cols is None else table.features.iloc[self.cols]
        self.features = features

    @property
    def n_features(self) -> int:
        """Number of features (columns) in the view."""
        return len(self.features)

    def subset(self, mask: np.ndarray) -> View:
        """Return a view of the columns where ``mask`` is true."""
        cols = np.arange(self.table.n_cols) if self.cols is None else self.cols
        return View(self.table, cols[mask], self.features.iloc[np.flatnonzero(mask)])

    def take(self, block: sp.csr_matrix) -> sp.csr_matrix:
        """Select this view's columns from rows of its table."""
        if self.cols is None:
            return block
        c = self.cols
        if len(c) and c[-1] - c[0] + 1 == len(c) and np.all(np.diff(c) == 1):
            return block[:, int(c[0]):int(c[-1]) + 1]
        return block[:, c]



class ColumnsTable(CountTable):
    """One 1-d array per feature (an anndata-encoded DataFrame such as ``obsm['protein']``), read by rows."""

    def __init__(self, path: Path, what: str, barcodes: pd.Index, features: pd.DataFrame,
                 columns: list[Any]) -> None:
        super().__init__(path, what, barcodes, features)
        for col in columns:
            if tuple(col.shape) != (len(barcodes),):
                raise InputError(f"{path}: {what} has a column of length {col.shape[0]} for {len(barcodes)} "
                                 "cells (shape mismatch)")
        self._columns = columns

    def _read_range(self, lo: int, hi: int) -> sp.csr_matrix:
        block = np.empty((hi - lo, len(self._columns)), dtype=np.float32)
        for j, col in enumerate(self._columns):
            block[:, j] = col[lo:hi]
        return sp.csr_matrix(block)
