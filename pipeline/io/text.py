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
from omicsclip.io.formats import READ_ERRORS, is_gzip, one_line, require_text
from omicsclip.io.raw import RawInput
from omicsclip.io.tables import CountTable, MemoryTable, View

log = logging.getLogger(__name__)

_BLOCK = 5_000  # rows per parsed block
_IN_MEMORY_BYTES = 32 << 20  # tables smaller than this on disk are simply loaded


def _open_text(path: Path):
    """Text handle on a table (gzip by content, not name), for the csv module (``newline=""``)."""
    opener = gzip.open if is_gzip(path) else open
    return opener(path, "rt", encoding="utf-8", newline="")


def _header(path: Path) -> tuple[str, list[str]]:
    """Separator and header fields (the first non-blank record; quoted fields may span lines)."""
    try:
        with _open_text(path) as fh:
            first = ""
            while not first.strip():
                first = fh.readline()
                if not first:
                    raise InputError(f"{path}: empty table")
            sep = _sep(path, first)
            fh.seek(0)
            for rec in csv.reader(fh, delimiter=sep):
                if not _blank(rec, sep):
                    return sep, rec
    except InputError:
        raise
    except (*READ_ERRORS, csv.Error) as exc:
        raise InputError(f"{path}: cannot read (truncated or corrupt file: {one_line(exc)})") from None
    raise InputError(f"{path}: empty table")


def _sep(path: Path, line: str) -> str:
    """Tab for ``.tsv``, comma for ``.csv`` (unless the header has none of it but the other); else the more common."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".csv")):
        sep, other = ("\t", ",") if name.endswith(".tsv") else (",", "\t")
        return other if sep not in line and other in line else sep
    return "\t" if line.count("\t") > line.count(",") else ","


def _blank(rec: list[str], sep: str) -> bool:
    """Return whether pandas skips this record: an empty line, or one of spaces (and tabs, unless tab separates fields)."""
    return not rec or (len(rec) == 1 and not rec[0].strip(" " if sep == "\t" else " \t"))


def _bad_line(path: Path, sep: str, n: int) -> InputError | None:
    """Return the error for the first record with other than ``n`` fields (numbered by physical line, the header is line 1)."""
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh, delimiter=sep)
            seen_header = False
            for rec in reader:
                if _blank(rec, sep):
                    continue
                if seen_header and len(rec) != n:
                    return InputError(f"{path}: line {reader.line_num} has {len(rec)} field"
                                      f"{'' if len(rec) == 1 else 's'}, expected {n}")
                seen_header = True
    except (*READ_ERRORS, csv.Error):
        return None
    return None


def _wrap(path: Path, exc: Exception, sep: str, n: int) -> InputError:
    msg = one_line(exc)
    if isinstance(exc, pd.errors.ParserError) and "fields" in msg:
        bad = _bad_line(path, sep, n)
        if bad is not None:
            return bad
    if isinstance(exc, ValueError) and ("convert" in msg or "could not" in msg):
        return InputError(f"{path}: non-numeric value in the count table ({msg})")
    return InputError(f"{path}: cannot parse the table (truncated or corrupt file: {msg})")


def _values(path: Path, sep: str, n: int, block: pd.DataFrame, checked: list[bool]) -> np.ndarray:
    """Return the counts of a block; a short row is reported as that row (not as NaN values).

    The file's rows are counted once (``checked``) at the first missing value; if all have ``n`` fields, the
    missing values are empty fields, which validation reports by cell and feature.
    """
    vals = block.iloc[:, 1:].to_numpy(dtype=np.float32, na_value=np.nan)
    if not checked[0] and np.isnan(vals).any():
        bad = _bad_line(path, sep, n)
        if bad is not None:
            raise bad
        checked[0] = True
    return vals


_NA = ["", "NA", "NaN", "nan"]


def _reader(path: Path, sep: str, n: int) -> Iterator[pd.DataFrame]:
    # positional column names: the real ones may repeat (validation reports duplicates; pandas would rename them)
    pos = ["__rowname__", *(f"_{i}" for i in range(1, n))]
    dtype = {c: np.float32 for c in pos[1:]}
    dtype[pos[0]] = str
    return pd.read_csv(path, sep=sep, header=0, names=pos, dtype=dtype, chunksize=_BLOCK, engine="c",
                       na_values={c: _NA for c in pos[1:]}, keep_default_na=False, encoding="utf-8",
                       compression="gzip" if is_gzip(path) else None)


def _columns(path: Path, header: list[str]) -> list[str]:
    """Column names of the header as written (duplicates kept, unlike pandas' header parsing)."""
    if len(header) < 2:
        raise InputError(f"{path}: table has no count columns (is the separator right?)")
    return ["__rowname__", *header[1:]]


class StreamedRowsTable(CountTable):
    """Cells in rows, read forwards in blocks; a backward read restarts the parser."""

    def __init__(self, path: Path, sep: str, names: list[str], barcodes: pd.Index) -> None:
        super().__init__(path, "table", barcodes, pd.DataFrame(index=pd.Index(names[1:])))
        self._sep, self._n = sep, len(names)
        self._checked = [False]  # rows counted (see _values)
        self._it: Iterator[pd.DataFrame] | None = None
        self._buf: sp.csr_matrix | None = None
        self._next = 0  # row index of the first row in the buffer / iterator

    def _restart(self) -> None:
        self._it = _reader(self.path, self._sep, self._n)
        self._buf = sp.csr_matrix((0, self.n_cols), dtype=np.float32)
        self._next = 0

    def _pull(self) -> None:
        try:
            block = next(self._it)
        except StopIteration:
            raise InputError(f"{self.path}: table ended early (truncated file)") from None
        except READ_ERRORS as exc:
            raise _wrap(self.path, exc, self._sep, self._n) from None
        vals = _values(self.path, self._sep, self._n, block, self._checked)
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


def _barcodes(path: Path, sep: str, n: int) -> pd.Index:
    try:
        col = pd.read_csv(path, sep=sep, usecols=[0], dtype=str, keep_default_na=False, encoding="utf-8",
                          compression="gzip" if is_gzip(path) else None).iloc[:, 0]
    except READ_ERRORS as exc:
        raise _wrap(path, exc, sep, n) from None
    return pd.Index(col.to_numpy())


def _load_rows(path: Path, sep: str, names: list[str]) -> tuple[pd.Index, sp.csr_matrix]:
    ids, blocks, n, checked = [], [], len(names), [False]
    try:
        for block in _reader(path, sep, n):
            ids.append(block.iloc[:, 0].to_numpy())
            blocks.append(sp.csr_matrix(_values(path, sep, n, block, checked)))
    except READ_ERRORS as exc:
        raise _wrap(path, exc, sep, n) from None
    if not blocks:
        return pd.Index([]), sp.csr_matrix((0, n - 1), dtype=np.float32)
    return pd.Index(np.concatenate(ids)), sp.vstack(blocks, format="csr")


def open_table(path: Path, *, genes_in_rows: bool) -> CountTable:
    """One count table as a cells x features :class:`CountTable`."""
    require_text(path, "csv")
    sep, header = _header(path)
    names = _columns(path, header)
    if genes_in_rows:
        features, m = _load_rows(path, sep, names)
        barcodes = pd.Index(names[1:])
        return MemoryTable(path, "table", barcodes, pd.DataFrame(index=features), m.T.tocsr())
    if path.stat().st_size <= _IN_MEMORY_BYTES:
        barcodes, m = _load_rows(path, sep, names)
        return MemoryTable(path, "table", barcodes, pd.DataFrame(index=pd.Index(names[1:])), m)
    return StreamedRowsTable(path, sep, names, _barcodes(path, sep, len(names)))


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
