"""CSV/TSV count tables (optionally gzipped): one per modality, cells in rows (default) or in columns.

Layout: the first row holds the column names, the first column the row names. With cells in rows, the table is
streamed in row blocks (pandas chunks); with genes in rows (``genes_in_rows``), it is read in gene blocks into a
sparse matrix and transposed in memory (memory ~ non-zeros, not the dense table).
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.errors import InputError
from omicsclip.io.formats import require_text
from omicsclip.io.raw import RawInput
from omicsclip.io.tables import CountTable, MemoryTable, View

log = logging.getLogger(__name__)

_BLOCK = 5_000  # rows per parsed block
_IN_MEMORY_BYTES = 32 << 20  # tables smaller than this on disk are simply loaded


def _first_line(path: Path) -> str:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            return fh.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read (truncated or corrupt file: {exc})") from None


def _sep(path: Path, line: str) -> str:
    return "\t" if line.count("\t") > line.count(",") else ","


def _wrap(path: Path, exc: Exception) -> InputError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, ValueError) and ("convert" in msg or "could not" in msg):
        return InputError(f"{path}: non-numeric value in the count table ({msg})")
    return InputError(f"{path}: cannot parse the table (truncated or corrupt file: {msg})")


def _reader(path: Path, sep: str, names: list[str], **kw) -> Iterator[pd.DataFrame]:
    # positional column names: the real ones may repeat (validation reports duplicates; pandas would rename them)
    pos = ["__rowname__", *(f"_{i}" for i in range(1, len(names)))]
    dtype = {n: np.float32 for n in pos[1:]}
    dtype[pos[0]] = str
    return pd.read_csv(path, sep=sep, header=0, names=pos, dtype=dtype, chunksize=_BLOCK, engine="c",
                       na_values=["", "NA", "NaN", "nan"], keep_default_na=False, **kw)


def _columns(path: Path, sep: str, line: str) -> list[str]:
    """Column names from the header ``line`` as written (duplicates kept, unlike pandas' header parsing)."""
    if not line.strip():
        raise InputError(f"{path}: empty table")
    try:
        cols = next(csv.reader([line.rstrip("\r\n")], delimiter=sep))
    except csv.Error as exc:
        raise _wrap(path, exc) from None
    if len(cols) < 2:
        raise InputError(f"{path}: table has no count columns (is the separator right?)")
    first = "__rowname__"
    return [first, *[str(c) for c in cols[1:]]]


class StreamedRowsTable(CountTable):
    """Cells in rows, read forwards in blocks; a backward read restarts the parser."""

    def __init__(self, path: Path, sep: str, names: list[str], barcodes: pd.Index) -> None:
        super().__init__(path, "table", barcodes, pd.DataFrame(index=pd.Index(names[1:])))
        self._sep, self._names = sep, names
        self._it: Iterator[pd.DataFrame] | None = None
        self._buf: sp.csr_matrix | None = None
        self._next = 0  # row index of the first row in the buffer / iterator

    def _restart(self) -> None:
        self._it = _reader(self.path, self._sep, self._names)
        self._buf = sp.csr_matrix((0, self.n_cols), dtype=np.float32)
        self._next = 0

    def _pull(self) -> None:
        try:
            block = next(self._it)
        except StopIteration:
            raise InputError(f"{self.path}: table ended early (truncated file)") from None
        except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
            raise _wrap(self.path, exc) from None
        vals = block.iloc[:, 1:].to_numpy(dtype=np.float32, na_value=np.nan)
        self._buf = sp.vstack([self._buf, sp.csr_matrix(vals)], format="csr")

    def _read_range(self, lo: int, hi: int) -> sp.csr_matrix:
        if self._it is None or lo < self._next:
            self._restart()
        while self._next + self._buf.shape[0] < hi:
            self._pull()
        out = self._buf[lo - self._next:hi - self._next]
        self._buf = self._buf[hi - self._next:]
        self._next = hi
        return out


def _barcodes(path: Path, sep: str) -> pd.Index:
    try:
        col = pd.read_csv(path, sep=sep, usecols=[0], dtype=str, keep_default_na=False).iloc[:, 0]
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
        raise _wrap(path, exc) from None
    return pd.Index(col.to_numpy())


def _load_rows(path: Path, sep: str, names: list[str]) -> tuple[pd.Index, sp.csr_matrix]:
    ids, blocks = [], []
    try:
        for block in _reader(path, sep, names):
            ids.append(block.iloc[:, 0].to_numpy())
            blocks.append(sp.csr_matrix(block.iloc[:, 1:].to_numpy(dtype=np.float32, na_value=np.nan)))
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
        raise _wrap(path, exc) from None
    if not blocks:
        return pd.Index([]), sp.csr_matrix((0, len(names) - 1), dtype=np.float32)
    return pd.Index(np.concatenate(ids)), sp.vstack(blocks, format="csr")


def open_table(path: Path, *, genes_in_rows: bool) -> CountTable:
    """One count table as a cells x features :class:`CountTable`."""
    require_text(path, "csv")
    line = _first_line(path)
    sep = _sep(path, line)
    names = _columns(path, sep, line)
    if genes_in_rows:
        features, m = _load_rows(path, sep, names)
        barcodes = pd.Index(names[1:])
        return MemoryTable(path, "table", barcodes, pd.DataFrame(index=features), m.T.tocsr())
    if path.stat().st_size <= _IN_MEMORY_BYTES:
        barcodes, m = _load_rows(path, sep, names)
        return MemoryTable(path, "table", barcodes, pd.DataFrame(index=pd.Index(names[1:])), m)
    return StreamedRowsTable(path, sep, names, _barcodes(path, sep))


def open_tables(paths: list[Path], *, genes_in_rows: bool, modality: str | None) -> RawInput:
    """Two tables (RNA, protein), or one table holding ``modality`` (``"rna"`` by default)."""
    raw = RawInput(fmt="csv", files=list(paths))
    tables = [open_table(p, genes_in_rows=genes_in_rows) for p in paths]
    if len(tables) == 2:
        raw.rna, raw.prot = View(tables[0]), View(tables[1])
        if tables[0].n_cols < tables[1].n_cols:
            log.warning("%s has fewer features (%d) than %s (%d): tables are read as RNA then protein",
                        paths[0], tables[0].n_cols, paths[1], tables[1].n_cols)
    else:
        setattr(raw, modality or "rna", View(tables[0]))
        other = "prot" if (modality or "rna") == "rna" else "rna"
        raw.missing[other] = "a single table holds one modality (give RNA and protein tables)"
    return raw
