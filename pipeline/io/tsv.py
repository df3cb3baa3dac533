r"""Tab-separated outputs that stay one record per line, whatever the names and labels hold.

Every TSV omicsclip writes goes through :func:`to_tsv` (or :func:`escape` for hand-written lines). Text fields
and column names are escaped the way PostgreSQL's ``COPY ... TEXT`` format does: a backslash becomes ``\\``, a
tab ``\t``, a newline ``\n``, a carriage return ``\r`` and any other control character (C0, DEL and C1, among
them the NEL U+0085 that some tools take for a line break) ``\xNN``. So a file is always one record per line for
``cut``/``wc``/``awk`` users, ``pandas.read_csv(path, sep="\t")`` reads it with the right shape, and
:func:`read_tsv` (or :func:`unescape` on each field) gives back the original text exactly. Double quotes are left
to pandas' CSV quoting (a field holding ``"`` is quoted), which ``read_csv`` undoes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

_SPECIAL = re.compile(r"[\\\x00-\x1f\x7f-\x9f]")  # backslash, C0, DEL, C1 (NEL \x85 too)
_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPED = re.compile(r"\\(\\|t|n|r|x[0-9a-fA-F]{2})")
_UNNAMED = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def escape(text: Any) -> str:
    """``text`` as one TSV field: backslash, tab, newline, CR and control characters escaped.

    Parameters
    ----------
    text
        Any value; it is converted with ``str`` first.

    Returns
    -------
    str
        Text with no tab, newline or other control character.
    """
    s = str(text)
    if not _SPECIAL.search(s):
        return s
    return _SPECIAL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), s)


def unescape(text: str) -> str:
    """Undo :func:`escape`.

    Parameters
    ----------
    text
        One field as read from a TSV file.

    Returns
    -------
    str
        The original text.
    """
    if "\\" not in text:
        return text
    return _ESCAPED.sub(lambda m: _UNNAMED.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), text)


def _escape_series(s: pd.Series) -> pd.Series:
    """Escape a text column: once per distinct value (query ids repeat k times, reference ids many more)."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    escaped = np.array([escape(u) for u in uniques], dtype=object)
    out = np.full(len(s), np.nan, dtype=object)
    present = codes >= 0
    out[present] = escaped[codes[present]]
    return pd.Series(out, index=s.index, name=s.name)


def escape_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``df`` with escaped column names and escaped text (object, string, category) columns.

    Parameters
    ----------
    df
        The table to write.

    Returns
    -------
    pandas.DataFrame
        Numbers untouched; every text field passed through :func:`escape`.
    """
    cols = {}
    for i in range(df.shape[1]):
        s = df.iloc[:, i]
        if (isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(s.dtype)
                or pd.api.types.is_string_dtype(s.dtype)):
            s = _escape_series(s)
        cols[i] = s
    out = pd.DataFrame(cols, index=df.index)
    out.columns = [escape(c) for c in df.columns]
    return out


def to_tsv(df: pd.DataFrame, target: str | Path | IO[str], *, header: bool = True, **kwargs: Any) -> None:
    """Write ``df`` as TSV through :func:`escape_frame` (no index, newline line ends).

    Parameters
    ----------
    df
        The table.
    target
        A path or an open text file (appended to, for chunked writers).
    header
        Whether to write the column names.
    **kwargs
        Passed to :meth:`pandas.DataFrame.to_csv` (e.g. ``float_format``).
    """
    escape_frame(df).to_csv(target, sep="\t", index=False, header=header, lineterminator="\n", **kwargs)


def read_tsv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """Read a TSV written by :func:`to_tsv`: text columns (and names) unescaped, ``NA``-like text kept as text.

    Parameters
    ----------
    path
        The file.
    **kwargs
        Passed to :func:`pandas.read_csv` (e.g. ``dtype=str``).

    Returns
    -------
    pandas.DataFrame
        The table as it was written.
    """
    kwargs.setdefault("keep_default_na", False)
    df = pd.read_csv(path, sep="\t", **kwargs)
    df.columns = [unescape(str(c)) for c in df.columns]
    for col in df.columns:
        if pd.api.types.is_object_dtype(df[col].dtype) or pd.api.types.is_string_dtype(df[col].dtype):
            df[col] = df[col].map(lambda v: unescape(v) if isinstance(v, str) else v)
    return df
