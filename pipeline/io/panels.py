"""Antibody panels of a pooled store: which proteins each cell was measured for.

A store pooled from several datasets (``omicsclip pool``) holds the *union* of their protein panels. A cell's
counts for a protein outside its own dataset's panel are stored as 0 but were never measured; every stage that
reads protein from a store must tell the two apart. The contract:

- obs column :data:`DATASET_COLUMN` names each cell's dataset;
- ``uns[PANELS_KEY]`` maps each dataset name to the list of proteins its panel measured.

A store without ``uns[PANELS_KEY]`` (one dataset, ``omicsclip ingest``) measured every protein in every cell.
:func:`protein_present` turns this into a cells x proteins mask.

Genes work the same way when a store is pooled on the *union* of its datasets' genes (``omicsclip pool --genes
union``): ``uns[GENE_PANELS_KEY]`` maps each dataset to the genes it measured, the others are stored as 0 counts
and never read as such. :func:`gene_masks` turns this into a small table of masks over any gene list (the store's,
or a model's) and a per-cell code into it, so a cell's unmeasured genes are left out (set to the training mean)
like a query's missing genes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError

DATASET_COLUMN = "dataset"
PANELS_KEY = "panels"
GENE_PANELS_KEY = "gene_panels"


def panels_of(uns: Mapping[str, Any] | None, key: str = PANELS_KEY) -> dict[str, list[str]] | None:
    """Return ``uns[key]`` as ``{dataset: [feature, ...]}``, or ``None`` when the store has one panel.

    ``key`` is :data:`PANELS_KEY` (proteins) or :data:`GENE_PANELS_KEY` (genes).
    """
    raw = (uns or {}).get(key)
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"store uns[{key!r}] must map dataset names to feature lists")
    return {str(k): [str(p) for p in np.asarray(v, dtype=object).ravel()] for k, v in raw.items()}


def dataset_order(uns: Mapping[str, Any] | None) -> list[str] | None:
    """Return a pooled store's dataset names in the order of its panel tables' rows (sorted), or ``None``."""
    names = panels_of(uns) or panels_of(uns, GENE_PANELS_KEY)
    return sorted(names) if names else None


def dataset_label(names: Sequence[str] | None, i: int) -> str:
    """How messages name dataset ``i`` of ``names`` (:func:`dataset_order`): its name, else its number."""
    return str(names[i]) if names and 0 <= i < len(names) else str(i)


def gene_masks(obs: pd.DataFrame, genes: Sequence[str], gene_panels: Mapping[str, Sequence[str]] | None
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Return ``(codes, table)``: per cell a row of ``table`` (datasets x ``genes``, True = measured).

    ``genes`` may be any gene list (the store's, or a model's: genes outside every panel count as unmeasured).
    ``None`` when every cell measured every one of ``genes`` (no ``gene_panels``, or panels that all cover them).

    Raises
    ------
    InputError
        A cell's dataset has no gene panel.
    """
    if gene_panels is None:
        return None
    codes, table = _codes_and_table(obs, genes, gene_panels, "gene", strict=False)
    return None if table.all() else (codes, table)


def _codes_and_table(obs: pd.DataFrame, features: Sequence[str], panels: Mapping[str, Sequence[str]], what: str,
                     *, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per cell its dataset's row of the datasets x ``features`` table of measured features.

    ``strict``: a panel naming a feature outside ``features`` is an error (else such names are ignored).
    """
    if DATASET_COLUMN not in obs.columns:
        raise InputError(f"store has {what} panels but no obs column {DATASET_COLUMN!r}")
    names = pd.Index([str(f) for f in features])
    datasets = sorted(panels)
    table = np.zeros((len(datasets), len(names)), bool)
    for i, d in enumerate(datasets):
        pos = names.get_indexer([str(f) for f in panels[d]])
        if strict and (pos < 0).any():
            raise InputError(f"panel of dataset {d!r} names {what}s the store lacks "
                             f"({', '.join(p for p, q in zip(panels[d], pos, strict=True) if q < 0)})")
        table[i, pos[pos >= 0]] = True
    codes = pd.Index(datasets).get_indexer(obs[DATASET_COLUMN].astype(str).to_numpy())
    if (codes < 0).any():
        bad = sorted(set(obs[DATASET_COLUMN].astype(str).to_numpy()[codes < 0]))
        raise InputError(f"cells of dataset(s) {', '.join(bad[:3])} have no {what} panel in the store")
    return codes.astype(np.int64), table


def dataset_codes(obs: pd.DataFrame, panels: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Per cell, the position of its dataset among ``sorted(panels)`` (the rows of the panel tables).

    Raises
    ------
    InputError
        No obs column :data:`DATASET_COLUMN`, or cells of a dataset without a panel.
    """
    return _codes_and_table(obs, (), panels, "protein", strict=False)[0]


def store_gene_masks(info: Mapping[str, Any], genes: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`gene_masks` of every cell of :func:`store_info`'s ``info`` over ``genes`` (default: the store's)."""
    gene_panels = panels_of(info.get("uns"), GENE_PANELS_KEY)
    if gene_panels is None:
        return None
    genes = [str(g) for g in info["genes"].index] if genes is None else genes
    return gene_masks(info["obs"], genes, gene_panels)


def store_protein_masks(info: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Return ``(codes, table)`` of the proteins each cell's dataset measured, or ``None`` for one panel.

    Per cell of :func:`store_info`'s ``info`` a row of ``table`` (datasets x the store's proteins, True =
    measured; datasets in the order of :func:`dataset_codes`).
    """
    panels = panels_of(info.get("uns"))
    if panels is None:
        return None
    return _codes_and_table(info["obs"], [str(p) for p in info["proteins"].index], panels, "protein", strict=True)


def split_by_codes(*codes: np.ndarray | None) -> list[tuple[tuple[int, ...], np.ndarray | slice]]:
    """Group cells by several per-cell codes at once (e.g. gene and protein panel): ``[((c1, c2), rows), ...]``.

    A ``None`` code reads as -1 for every cell; ``[((-1, ...), slice(None))]`` when all are ``None``.
    """
    given = [c for c in codes if c is not None]
    if not given:
        return [((-1,) * len(codes), slice(None))]
    n = len(given[0])
    keys, inverse = np.unique(np.stack([np.full(n, -1) if c is None else np.asarray(c) for c in codes], axis=1),
                              axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return [(tuple(int(v) for v in key), np.flatnonzero(inverse == i)) for i, key in enumerate(keys)]


def column_names(names: Sequence[str], cols: np.ndarray | slice) -> list[str]:
    """Return the names of the columns ``cols`` (a selection of :func:`dataset_groups`)."""
    return list(names) if isinstance(cols, slice) else [names[c] for c in cols]


def dataset_groups(gene_masks: tuple[np.ndarray, np.ndarray] | None,
                   protein_masks: tuple[np.ndarray, np.ndarray] | None
                   ) -> list[tuple[int, np.ndarray | slice, np.ndarray | slice, np.ndarray | slice]]:
    """Group cells by the genes and proteins their dataset measured: ``[(dataset, rows, gene_cols, protein_cols)]``.

    ``gene_masks`` / ``protein_masks``: ``(codes of these cells, table)`` (:func:`store_gene_masks`,
    :func:`store_protein_masks`, codes indexed to the cells at hand) or ``None`` when every cell measured every
    one. Each group's cells enter a model with those columns only, so what their dataset did not measure is
    unmeasured, not a zero count. ``dataset`` is the position in :func:`dataset_codes`' order (-1: one dataset).
    """
    out = []
    for (gc, pc), rows in split_by_codes(None if gene_masks is None else gene_masks[0],
                                         None if protein_masks is None else protein_masks[0]):
        out.append((pc if pc >= 0 else gc, rows,  # both codes index the datasets in name order
                    slice(None) if gc < 0 else np.flatnonzero(gene_masks[1][gc]),
                    slice(None) if pc < 0 else np.flatnonzero(protein_masks[1][pc])))
    return out


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
    codes, table = _codes_and_table(obs, proteins, panels, "protein", strict=True)
    return None if table.all() else table[codes]


def store_present(info: Mapping[str, Any], rows: np.ndarray | slice | None = None) -> np.ndarray | None:
    """:func:`protein_present` for the cells ``rows`` (positions, slice or all) of :func:`store_info`'s ``info``."""
    obs = info["obs"] if rows is None else info["obs"].iloc[rows]
    return protein_present(obs, [str(p) for p in info["proteins"].index], panels_of(info.get("uns")))
