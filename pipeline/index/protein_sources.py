"""Which dataset of a pooled reference each protein is imputed from (``index.protein_sources``).

A reference pooled from several labs holds the same protein measured with different antibodies, chemistries and
titres, and one lab's measurement can be much noisier than another's (the 5' PBMC set's CD4 is zero in ~70 % of its
cells). Averaging neighbours across datasets then mixes a good measurement with a poor one, on different CLR
scales (``bench/pooled_diagnose.py``). With ``best`` (the default) a protein measured by two or more datasets is
kept only in the dataset whose own cells predict it best from the embedding; the other datasets' values of it
become unmeasured (NaN), so ``omicsclip query`` imputes it from the nearest cells of that dataset.

A dataset's *reliability* for a protein: half of its cells (up to ``MAX_QUERIES``) impute the protein from the
other half (every dataset's other half subsampled to one size, the smallest among the datasets assessed and at most
``MAX_REFERENCE``, so that no dataset wins by size) as ``omicsclip query`` does (``K`` neighbours, softmax
``TEMPERATURE``, exact search), and the Pearson correlation of imputed and measured values is the score. Only
reference cells take part, a sample of fixed size per dataset (the cost does not grow with the atlas), seeded by
``index.seed``. A dataset with fewer than ``MIN_HALF`` cells per half, or one where only some cells measured the
protein, is not assessed: it is never the source and keeps its values.

A source must hold every cell type (``MIN_TYPE`` cells or more of a label, when the index has labels) that the
other datasets measuring the protein hold: otherwise query cells of a type it lacks would be imputed from cells of
other types; the next most reliable dataset that holds them all is chosen, or none (every dataset's cells serve).
Datasets that name the same types differently therefore fall back to every dataset (with a warning: harmonise the
labels). An unlabelled dataset cannot be checked (a warning when it is chosen over labelled ones): pool datasets
of like composition, or use ``index.protein_sources: all``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.conventions import label_values

log = logging.getLogger(__name__)

MODES = ("best", "all")
K, TEMPERATURE = 20, 0.05  # the query defaults (query.impute_k, query.temperature)
MAX_QUERIES, MAX_REFERENCE = 2_000, 20_000  # cells per dataset in the split-half estimate
MIN_HALF = 250  # a dataset with fewer cells per half is not assessed (NaN): never a source, its values kept
MIN_TYPE = 10  # cells of a label for a dataset to hold that type (coverage check)
_BLOCK = 65_536  # reference rows masked at a time (the protein may be a memory map)


def protein_reliability(read_embedding: Callable[[np.ndarray], np.ndarray], protein: np.ndarray,
                        datasets: np.ndarray, names: Sequence[str], *, seed: int = 0) -> pd.DataFrame:
    """Split-half reliability of every protein in every dataset (proteins x datasets; NaN: not assessed).

    Every dataset's reference half is subsampled to the same size (the smallest half among the datasets assessed,
    at most ``MAX_REFERENCE``), so that no dataset scores higher for being larger. A dataset with fewer than
    ``MIN_HALF`` cells per half is not assessed, nor is a protein that only some of a dataset's sampled cells
    measured. A measured protein whose correlation is undefined (constant values) gets -1: never chosen.

    Parameters
    ----------
    read_embedding
        Returns the reference embedding (unit rows) of the given sorted row positions.
    protein
        Reference CLR protein (cells x proteins), NaN where a cell's panel lacked the protein.
    datasets
        Dataset of every reference cell.
    names
        Protein names (the rows of the result).
    seed
        Seeds the split of each dataset's cells.
    """
    from omicsclip.index.impute import knn_impute

    rng = np.random.default_rng(seed)
    labels = sorted(set(map(str, datasets)))
    rel = pd.DataFrame(np.nan, index=[str(p) for p in names], columns=labels)
    halves = {}
    for d in labels:
        cells = rng.permutation(np.flatnonzero(datasets == d))
        if len(cells) // 2 >= MIN_HALF:
            halves[d] = (cells[: len(cells) // 2], cells[len(cells) // 2 :])
    size = min([MAX_REFERENCE, *(len(r) for _, r in halves.values())])
    for d, (q, r) in halves.items():
        q, r = np.sort(q[:MAX_QUERIES]), np.sort(r[:size])
        truth, values = np.asarray(protein[q], np.float64), np.asarray(protein[r], np.float32)
        cols = np.flatnonzero(np.isfinite(truth).all(0) & np.isfinite(values).all(0))  # measured by every cell
        if not cols.size:
            continue
        pred = knn_impute(read_embedding(q), read_embedding(r), values[:, cols], k=K, temperature=TEMPERATURE)
        for c, j in enumerate(cols):
            with warnings.catch_warnings():  # a constant protein: no correlation
                warnings.simplefilter("ignore", RuntimeWarning)
                r_dj = np.corrcoef(truth[:, j], pred[:, c])[0, 1]
            rel.iloc[j, labels.index(d)] = r_dj if np.isfinite(r_dj) else -1.0
    return rel


def dataset_types(labels: Sequence[Any], datasets: np.ndarray, ignore: Sequence[str] = ()) -> dict[str, set[str]]:
    """Per dataset, the labels ``MIN_TYPE`` or more of its cells hold (empty set: an unlabelled dataset).

    Missing labels and ``ignore`` values are no label (:func:`omicsclip.conventions.label_values`).
    """
    frame = pd.DataFrame({"dataset": np.asarray(datasets, dtype=object),
                          "type": label_values(labels, ignore)}).dropna()
    counts = frame.groupby(["dataset", "type"]).size()
    held = counts[counts >= MIN_TYPE].reset_index()
    types: dict[str, set[str]] = {str(d): set() for d in set(map(str, datasets))}
    for d, t in zip(held["dataset"], held["type"], strict=True):
        types[str(d)].add(str(t))
    return types


def best_sources(rel: pd.DataFrame, types: dict[str, set[str]] | None = None,
                 measured_by: dict[str, list[str]] | None = None,
                 ) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
    """Choose each protein's source dataset (proteins assessed in two or more datasets).

    The most reliable dataset that holds every cell type (``types``: :func:`dataset_types`) that the other datasets
    measuring the protein (``measured_by``: assessed or not; default the assessed ones) hold; none if no dataset
    does. An unlabelled dataset holds no known type: it is never found lacking, and asks nothing of the others.

    Returns ``(sources, passed_over)``: protein -> dataset, and protein -> {dataset passed over: types it lacks}.
    """
    types = types or {}
    sources, passed = {}, {}
    for p, row in rel.iterrows():
        row = row.dropna()
        if len(row) < 2:
            continue
        members = (measured_by or {}).get(str(p), list(row.index))
        for d in row.sort_values(ascending=False).index:
            need = set().union(*(types.get(e, set()) for e in members if e != d))
            lacks = sorted(need - types[d]) if types.get(d) else []
            if not lacks:
                sources[str(p)] = str(d)
                break
            passed.setdefault(str(p), {})[str(d)] = lacks
    return sources, passed


def restrict_to_sources(protein: np.ndarray, datasets: np.ndarray, names: Sequence[str],
                        sources: dict[str, str], assessed: dict[str, list[str]] | None = None) -> None:
    """Set, in place, each sourced protein to NaN (unmeasured) in the other datasets' cells.

    Only datasets ``assessed`` for the protein (default: every other dataset); one that was not keeps its values.
    """
    cols = {j: (sources[str(p)], None if assessed is None else list(assessed[str(p)]))
            for j, p in enumerate(names) if str(p) in sources}
    for start in range(0, len(protein), _BLOCK):
        block, ds = protein[start:start + _BLOCK], datasets[start:start + _BLOCK]
        for j, (src, among) in cols.items():
            drop = ds != src if among is None else np.isin(ds, [d for d in among if d != src])
            block[drop, j] = np.nan
    if hasattr(protein, "flush"):
        protein.flush()


def _measured_by(protein: np.ndarray, datasets: np.ndarray, names: Sequence[str]) -> dict[str, list[str]]:
    """Protein -> the datasets with a cell that measured it (read in row blocks)."""
    labels = sorted(set(map(str, datasets)))
    seen = np.zeros((len(labels), len(names)), bool)
    for start in range(0, len(protein), _BLOCK):
        finite, ds = np.isfinite(np.asarray(protein[start:start + _BLOCK])), datasets[start:start + _BLOCK]
        for i, d in enumerate(labels):
            seen[i] |= finite[ds == d].any(axis=0)
    return {str(p): [d for i, d in enumerate(labels) if seen[i, j]] for j, p in enumerate(names)}


def _warn(sources: dict[str, str], passed: dict[str, dict[str, list[str]]], types: dict[str, set[str]],
          measured_by: dict[str, list[str]]) -> None:
    """One warning for sources passed over for lacking cell types, one for sources whose types are unknown."""
    if passed:
        lacking = sorted({t for by in passed.values() for lacks in by.values() for t in lacks})
        log.warning("pooled reference: for %d proteins the most reliable dataset was passed over for lacking cell "
                    "types another dataset holds (%s); if the datasets name the same types differently, harmonise "
                    "the labels (index.label_key)", len(passed), ", ".join(lacking[:5]))
    unchecked = [p for p, d in sources.items()
                 if not types.get(d) and any(types.get(e) for e in measured_by.get(p, []) if e != d)]
    if unchecked:
        log.warning("pooled reference: %s imputed from an unlabelled dataset whose cell types cannot be checked "
                    "against the labelled ones (index.protein_sources=all to use every dataset)",
                    ", ".join(unchecked[:8]))


def apply_protein_sources(protein: np.ndarray, datasets: Sequence[Any] | None, names: Sequence[str],
                          read_embedding: Callable[[np.ndarray], np.ndarray], *, mode: str, seed: int = 0,
                          labels: Sequence[Any] | None = None, ignore_labels: Sequence[str] = ()) -> dict[str, Any] | None:
    """Apply ``index.protein_sources`` to a reference's CLR protein (in place); return what to record, or None.

    ``labels`` (a cell type per cell, optional) guards against a source that lacks a type another dataset holds.
    Nothing happens (``None``) with ``mode="all"``, without a dataset per cell, with a single dataset, or when some
    cell has no dataset (with a warning).
    """
    if mode not in MODES:
        from omicsclip.errors import InputError

        raise InputError(f"index.protein_sources={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "all" or datasets is None:
        return None
    ds = pd.Series(datasets, dtype=object)
    unnamed = ds.isna() | (ds.astype(str).str.strip() == "")
    if unnamed.any():
        log.warning("index.protein_sources=best: %d reference cells have no dataset; every protein is imputed from "
                    "all datasets", int(unnamed.sum()))
        return None
    datasets = ds.astype(str).to_numpy(dtype=object)
    if len(set(datasets)) < 2:
        return None
    rel = protein_reliability(read_embedding, protein, datasets, names, seed=seed)
    measured_by = _measured_by(protein, datasets, names)
    types = {} if labels is None else dataset_types(labels, datasets, ignore_labels)
    sources, passed = best_sources(rel, types, measured_by)
    assessed = {str(p): [str(d) for d in row.dropna().index] for p, row in rel.iterrows()}
    restrict_to_sources(protein, datasets, names, sources, assessed)
    for p, row in rel.iterrows():
        if row.notna().sum() < 2:
            continue
        scores = ", ".join(f"{d} {v:.2f}" for d, v in row.dropna().items())
        skipped = "; ".join(f"not {d}: lacks {', '.join(t[:3])}" for d, t in passed.get(str(p), {}).items())
        log.info("pooled reference: %s imputed from %s (split-half r: %s)%s", p,
                 f"{sources[str(p)]} cells only" if str(p) in sources else "every dataset", scores,
                 f"; {skipped}" if skipped else "")
    _warn(sources, passed, types, measured_by)
    return {"mode": mode, "sources": sources, "passed_over": passed, "measured_by": measured_by,
            "reliability": {str(p): {str(d): round(float(v), 4) for d, v in row.dropna().items()}
                            for p, row in rel.iterrows()}}
