"""Antibody panels of a pooled store: which proteins each cell was measured for.

A store pooled from several datasets (``omicsclip pool``) holds the *union* of their protein panels. A cell's
counts for a protein outside its own dataset's panel are stored as 0 but were never measured; every stage that
reads protein from a store must tell the two apart. The contract:

- obs column :data:`DATASET_COLUMN` names each cell's dataset;
- ``uns[PANELS_KEY]`` maps each dataset name to the list of proteins its panel measured.

A store without ``uns[PANELS_KEY]`` (one dataset, ``omicsclip ingest``) measured every protein in every cell.
:func:`protein_present` turns this into a cells x proteins mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError

DATASET_COLUMN = "dataset"
PANELS_KEY = "panels"


def panels_of(uns: Mapping[str, Any] | None) -> dict[str, list[str]] | None:
    """Return ``uns[PANELS_KEY]`` as ``{dataset: [protein, ...]}``, or ``None`` when the store has one panel."""
    raw = (uns or {}).get(PANELS_KEY)
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"store uns[{PANELS_KEY!r}] must map dataset names to protein lists")
    return {str(k): [str(p) for p in np.asarray(v, dtype=object).ravel()] for k, v in raw.items()}


def protein_present(obs: pd.DataFrame, proteins: Sequence[str],
                    panels: Mapping[str, Sequence[str]] | None) -> np.ndarray | None:
    """Return the cells x proteins mask of measured proteins, or ``None`` when every cell measured every protein.

    Parameters
    ----------
    obs
        The cells (rows of the mask); needs :data:`DATASET_COLUMN` when ``panels`` is given.
    proteins
        The store's proteins (columns of the mask), in store order.
    panels
        :func:`panels_of` of the store's ``uns``.

    Raises
    ------
    InputError
        A cell's dataset has no panel, or a panel names a protein the store lacks.
    """
    if panels is None:
        return None
    if DATASET_COLUMN not in obs.columns:
        raise InputError(f"store has protein panels but no obs column {DATASET_COLUMN!r}")
    names = pd.Index([str(p) for p in proteins])
    datasets = sorted(panels)
    table = np.zeros((len(datasets), len(names)), bool)
    for i, d in enumerate(datasets):
        pos = names.get_indexer(list(panels[d]))
        if (pos < 0).any():
            raise InputError(f"panel of dataset {d!r} names proteins the store lacks "
                             f"({', '.join(p for p, q in zip(panels[d], pos, strict=True) if q < 0)})")
        table[i, pos] = True
    codes = pd.Index(datasets).get_indexer(obs[DATASET_COLUMN].astype(str).to_numpy())
    if (codes < 0).any():
        bad = sorted(set(obs[DATASET_COLUMN].astype(str).to_numpy()[codes < 0]))
        raise InputError(f"cells of dataset(s) {', '.join(bad[:3])} have no protein panel in the store")
    if table.all():
        return None
    return table[codes]


def store_present(info: Mapping[str, Any], rows: np.ndarray | slice | None = None) -> np.ndarray | None:
    """:func:`protein_present` for the cells ``rows`` (positions, slice or all) of :func:`store_info`'s ``info``."""
    obs = info["obs"] if rows is None else info["obs"].iloc[rows]
    return protein_present(obs, [str(p) for p in info["proteins"].index], panels_of(info.get("uns")))
