"""Incremental writers for query results: tables and an ``.h5ad`` appended chunk by chunk (bounded memory).

They write into the temporary results folder that :func:`omicsclip.index.query.run_query` renames into place when
everything is complete, so a failure never leaves a half-written result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from omicsclip.io.tsv import to_tsv

NEIGHBOUR_COLUMNS = ("query_id", "query_modality", "index_modality", "rank", "reference_id", "similarity")


class TableWriter:
    """Append DataFrame chunks to a parquet file and a TSV file with the same columns.

    The TSV goes through :func:`omicsclip.io.tsv.to_tsv`: names and labels holding tabs, newlines, backslashes or
    other control characters are escaped, so the file stays one record per line (:func:`omicsclip.io.tsv.read_tsv`
    gives the original text back); the parquet file keeps the text as it is.

    Parameters
    ----------
    stem
        Output path without suffix; writes ``stem.parquet`` and/or ``stem.tsv``.
    parquet, tsv
        Which files to write.
    """

    def __init__(self, stem: Path, *, parquet: bool = True, tsv: bool = True) -> None:
        self.stem = Path(stem)
        self.parquet, self.tsv = parquet, tsv
        self._pq = None
        self._fh = None
        self.n_rows = 0

    def write(self, df: pd.DataFrame) -> None:
        """Append ``df`` (the first chunk fixes the columns and types)."""
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.stem.with_suffix(".parquet"), table.schema)
            self._pq.write_table(table.cast(self._pq.schema))
        if self.tsv:
            first = self._fh is None
            if first:
                self._fh = open(self.stem.with_suffix(".tsv"), "w", newline="", encoding="utf-8")
            to_tsv(df, self._fh, header=first, float_format="%.6g")
        self.n_rows += len(df)

    def close(self) -> list[str]:
        """Finish the files; returns the names written."""
        names = []
        if self._pq is not None:
            self._pq.close()
            names.append(self.stem.with_suffix(".parquet").name)
        if self._fh is not None:
            self._fh.close()
            names.append(self.stem.with_suffix(".tsv").name)
        return names


def _attrs(obj, kind: str, version: str = "0.2.0") -> None:
    obj.attrs["encoding-type"] = kind
    obj.attrs["encoding-version"] = version


class H5adAppender:
    """Write an AnnData ``.h5ad`` (dense float32 X, numeric obs columns) by appending cell chunks.

    The file follows anndata's on-disk encoding, so ``anndata.read_h5ad`` (and scanpy) open it directly.

    Parameters
    ----------
    path
        Output ``.h5ad``.
    var_names
        Feature names (columns of X).
    obs_columns
        Names of float32 per-cell columns written next to X.
    uns
        Small metadata mapping (scalars/strings) stored in ``uns``.
    """

    def __init__(self, path: Path, var_names: Sequence[str], obs_columns: Sequence[str],
                 uns: dict | None = None) -> None:
        import h5py
        from anndata.io import write_elem

        self.path = Path(path)
        self.obs_columns = list(obs_columns)
        self.n_vars = len(var_names)
        f = h5py.File(self.path, "w")
        self._f = f
        _attrs(f, "anndata", "0.1.0")
        self._x = f.create_dataset("X", shape=(0, self.n_vars), maxshape=(None, self.n_vars), dtype="f4",
                                   chunks=(max(1, min(8192, 2**20 // max(self.n_vars, 1))), max(self.n_vars, 1)))
        _attrs(self._x, "array")
        obs = f.create_group("obs")
        _attrs(obs, "dataframe")
        obs.attrs["_index"] = "_index"
        obs.attrs["column-order"] = np.array(self.obs_columns, dtype=object)
        self._index = obs.create_dataset("_index", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(),
                                         chunks=(16384,))
        _attrs(self._index, "string-array")
        self._cols = {}
        for c in self.obs_columns:
            self._cols[c] = obs.create_dataset(c, shape=(0,), maxshape=(None,), dtype="f4", chunks=(16384,))
            _attrs(self._cols[c], "array")
        write_elem(f, "var", pd.DataFrame(index=pd.Index([str(v) for v in var_names])))
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            write_elem(f, key, {})
        write_elem(f, "uns", dict(uns or {}))
        self.n_obs = 0

    def append(self, ids: Sequence[str], x: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Add cells ``ids`` with rows ``x`` (n x n_vars) and per-cell ``columns``."""
        n = len(ids)
        if n == 0:
            return
        start, stop = self.n_obs, self.n_obs + n
        self._x.resize(stop, axis=0)
        self._x[start:stop] = np.asarray(x, dtype=np.float32)
        self._index.resize((stop,))
        self._index[start:stop] = np.asarray([str(i) for i in ids], dtype=object)
        for c, ds in self._cols.items():
            ds.resize((stop,))
            ds[start:stop] = np.asarray(columns[c], dtype=np.float32)
        self.n_obs = stop

    def close(self) -> str:
        """Finish the file; returns its name."""
        self._f.close()
        return self.path.name
