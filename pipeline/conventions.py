"""Names and rules every stage shares, defined once: the modalities, the embedding keys, what is "unlabelled".

Readers, the model, the index, the heads, evaluation and the report all import these; a second copy anywhere
would drift (a label "NA" was once a class in one stage and missing in another).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

#: The two modalities, in the order every (rna, prot) pair, mask column and per-modality output uses.
MODALITIES: tuple[str, str] = ("rna", "prot")

#: ``obsm`` keys of the embeddings (``omicsclip embed``; scanpy: ``sc.pp.neighbors(adata, use_rep=...)``).
EMBEDDING_KEYS: dict[str, str] = {"rna": "X_omicsclip_rna", "prot": "X_omicsclip_prot", "joint": "X_omicsclip_joint"}
OBSM_RNA, OBSM_PROT, OBSM_JOINT = EMBEDDING_KEYS["rna"], EMBEDDING_KEYS["prot"], EMBEDDING_KEYS["joint"]

#: Label values that mean "no label" (compared after stripping and lower-casing), besides missing values.
UNLABELLED_VALUES: frozenset[str] = frozenset({"", "nan", "none", "na", "<na>"})


def is_unlabelled(value: Any) -> bool:
    """Return whether one label value means "no label".

    Parameters
    ----------
    value
        One label: missing values (``None``, NaN, ``pd.NA``) and strings in :data:`UNLABELLED_VALUES` after
        stripping and lower-casing (``""``, ``"nan"``, ``"None"``, ``"NA"``, ``"<NA>"``) are unlabelled;
        array-likes never count as unlabelled.

    Returns
    -------
    bool
        ``True`` for no label.
    """
    if value is None:
        return True
    try:
        if pd.isna(value):
            return True
    except (TypeError, ValueError):  # array-likes are never a label
        return False
    return str(value).strip().lower() in UNLABELLED_VALUES


def label_values(values: Iterable[Any], ignore: Iterable[str] = ()) -> np.ndarray:
    """Return labels as an object array of stripped strings, ``None`` where unlabelled or listed in ``ignore``.

    Parameters
    ----------
    values
        One label per cell (a pandas column, list or array).
    ignore
        Label values treated as unlabelled too (e.g. ``evaluate.ignore_labels``), compared after stripping and
        ignoring case (``unknown`` also drops ``Unknown``).

    Returns
    -------
    numpy.ndarray
        One entry per value: the stripped label string, or ``None`` (see :func:`is_unlabelled`).
    """
    ignored = {str(s).strip().lower() for s in ignore}
    items = list(values)
    out = np.empty(len(items), dtype=object)
    for i, v in enumerate(items):
        s = None if is_unlabelled(v) else str(v).strip()
        out[i] = None if s is None or s.lower() in ignored else s
    return out
