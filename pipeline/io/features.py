"""Feature names: uniqueness, isotype-control and hashtag (HTO) recognition by name pattern."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from omicsclip.errors import InputError

DEFAULT_ISOTYPE_PATTERNS = ["(?i)isotype", "(?i)^igg", "(?i)^mouse[_-]?igg", "(?i)^rat[_-]?igg", "(?i)ctrl"]
DEFAULT_HTO_PATTERNS = ["(?i)^hto[_-]?\\d", "(?i)hashtag"]


def _compile(patterns: Sequence[str], *, key: str) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise InputError(f"ingest.{key}: invalid regular expression {p!r} ({str(exc).splitlines()[0]})") from None
    return out


def match_names(names: Sequence[str], patterns: Sequence[str], *, key: str = "isotype_patterns") -> np.ndarray:
    """Boolean mask: which ``names`` match any of ``patterns`` (``re.search``)."""
    regs = _compile(patterns, key=key)
    return np.array([any(r.search(str(n)) for r in regs) for n in names], dtype=bool)


def examples(values: Sequence[str], k: int = 3) -> str:
    """Format a few values for one-line error messages: ``'a', 'b', 'c', ...``."""
    shown = ", ".join(repr(str(v)) for v in list(values)[:k])
    return shown + (", ..." if len(values) > k else "")


def name_list(values: Sequence[str], k: int = 8) -> str:
    """Join names for a one-line message, control characters escaped: ``adt, rna`` (``...`` after ``k``)."""
    shown = ", ".join(repr(str(v))[1:-1] for v in list(values)[:k])
    return shown + (", ..." if len(values) > k else "")


def check_unique_features(names: pd.Index, *, path: Path | str, what: str, unique: bool) -> pd.Index:
    """Return ``names`` as strings, refusing duplicates unless ``unique``.

    Parameters
    ----------
    names
        Feature names in column order.
    path
        The input file, named in the error message.
    what
        ``gene`` or ``protein``, named in the error message.
    unique
        Suffix repeated names instead of refusing them, the way AnnData does
        (:func:`anndata.utils.make_index_unique`): the second ``X`` becomes ``X-1``, the third ``X-2``,
        skipping suffixes that are already names.

    Returns
    -------
    pandas.Index
        The (possibly suffixed) names.

    Raises
    ------
    InputError
        Duplicate names and not ``unique``.
    """
    names = pd.Index([str(n) for n in names], dtype=object)
    dup = names[names.duplicated()].unique()
    if len(dup) == 0:
        return names
    if unique:
        from anndata.utils import make_index_unique

        return make_index_unique(names)
    raise InputError(f"{path}: {len(dup)} duplicate {what} names (e.g. {examples(dup)}); "
                     "pass --make-unique (Python: make_unique=True) to suffix them (-1, -2, ...) or fix the input")


def check_unique_barcodes(barcodes: pd.Index, *, path: Path | str) -> None:
    """Duplicate cell barcodes are always an error (cells could not be paired)."""
    if barcodes.has_duplicates:
        dup = barcodes[barcodes.duplicated()].unique()
        raise InputError(f"{path}: {len(dup)} duplicate cell barcodes (e.g. {examples(dup)})")
