"""Which dataset of a pooled reference each protein is imputed from (``index.protein_sources``).

A reference pooled from several labs holds the same protein measured with different antibodies, chemistries and
titres, and one lab's measurement can be much noisier than another's (the 5' PBMC set's CD4 is zero in ~70 % of its
cells). Averaging neighbours across datasets then mixes a good measurement with a poor one, on different CLR
scales (``bench/pooled_diagnose.py``). With ``best`` (the default) a protein measured by two or more datasets is
kept only in the dataset whose own cells predict it best from the embedding; the other datasets' values of it
become unmeasured (NaN), so ``omicsclip query`` imputes it from the nearest cells of that dataset.

A dataset's *reliability* for a protein: half of its cells (up to ``MAX_QUERIES``) impute the protein from the
other half (every dataset's other half subsampled to one size, at most ``MAX_REFERENCE``, so that no dataset wins
by size) as ``omicsclip query`` does (``K`` neighbours, softmax ``TEMPERATURE``, exact search), and the Pearson
correlation of imputed and measured values is the score. Only reference cells take part, a sample of fixed size
per dataset (the cost does not grow with the atlas), seeded by ``index.seed``.

A source must hold every cell type the other datasets hold (``MIN_TYPE`` cells or more of a label, when the index
has labels): otherwise query cells of a type it lacks would be imputed from cells of other types; the next most
reliable dataset that holds them all is chosen, or none (every dataset's cells serve). Without labels this cannot
be checked: pool datasets of like composition, or use ``index.protein_sources: all``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MODES = ("best", "all")
K, TEMPERATURE = 20, 0.05  # the query defaults (query.impute_k, query.temperature)
MAX_QUERIES, MAX_REFERENCE = 2_000, 20_000  # cells per dataset in the split-half estimate
MIN_CELLS = 50  # a dataset with fewer cells per half (or measuring a protein) gets no reliability (for it)
MIN_TYPE = 10  # cells of a label in a dataset for its source to need that label too (coverage check)
_BLOCK = 65_536  # reference rows masked at a time (the protein may be a memory map)


def protein_reliability(read_embedding: Callable[[np.ndarray], np.ndarray], protein: np.ndarray,
                        datasets: np.ndarray, names: Sequence[str], *, seed: int = 0) -> pd.DataFrame:
    """Split-half reliability of every protein in every dataset (proteins x datasets; NaN: not measured there).

    Every dataset's reference half is subsampled to the same size (the smallest half, at most ``MAX_REFERENCE``),
    so that no dataset scores higher for being larger. A measured protein whose correlation is undefined (constant
    values) gets -1: it is never chosen over a measured one. A dataset too small for the estimate gets NaN.

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
        if len(cells) // 2 >= MIN_CELLS:
            halves[d] = (cells[: len(cells) // 2], cells[len(cells) // 2 :])
    size = min([MAX_REFERENCE, *(len(r) for _, r in halves.values())])
    for d, (q, r) in halves.items():
        q, r = np.sort(q[:MAX_QUERIES]), np.sort(r[:size])
        truth, values = np.asarray(protein[q], np.float64), np.asarray(protein[r], np.float32)
        cols = np.flatnonzero((np.isfinite(truth).sum(0) >= MIN_CELLS) & (np.isfinite(values).sum(0) >= MIN_CELLS))
        if not cols.size:
            continue
        pred = knn_impute(read_embedding(q), read_embedding(r), values[:, cols], k=K, temperature=TEMPERATURE)
        for c, j in enumerate(cols):
            ok = np.isfinite(truth[:, j]) & np.isfinite(pred[:, c])
            with warnings.catch_warnings():  # a constant protein: no correlation
                warnings.simplefilter("ignore", RuntimeWarning)
                r_dj = np.corrcoef(truth[ok, j], pred[ok, c])[0, 1] if ok.sum() > 2 else np.nan
            rel.iloc[j, labels.index(d)] = r_dj if np.isfinite(r_dj) else -1.0
    return rel


def missing_types(labels: np.ndarray | None, datasets: np.ndarray, source: str, others: Sequence[str],
                  ignore: Sequence[str] = ()) -> list[str]:
    """Labels held by ``MIN_TYPE`` or more cells of one of ``others`` that no cell of ``source`` holds.

    Unlabelled cells (missing, empty or an ``ignore`` value) take no part; an unlabelled dataset lacks nothing and
    is never found lacking (its types are unknown).
    """
    if labels is None:
        return []
    lab = pd.Series(labels, dtype=object)
    usable = lab.notna() & ~lab.astype(str).str.strip().isin(["", "nan", *map(str, ignore)])
    own = set(lab[usable & (datasets == source)].astype(str))
    if not own:
        return []
    need: set[str] = set()
    for e in others:
        counts = lab[usable & (datasets == e)].astype(str).value_counts()
        need |= set(counts[counts >= MIN_TYPE].index)
    return sorted(need - own)


def best_sources(rel: pd.DataFrame, labels: np.ndarray | None = None, datasets: np.ndarray | None = None,
                 ignore: Sequence[str] = ()) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
    """Choose each protein's source dataset (proteins with a reliability in two or more datasets).

    The most reliable dataset that holds every cell type (``labels``) the others hold; none if no dataset does.

    Returns ``(sources, passed_over)``: protein -> dataset, and protein -> {dataset passed over: types it lacks}.
    """
    sources, passed = {}, {}
    for p, row in rel.iterrows():
        row = row.dropna()
        if len(row) < 2:
            continue
        for d in row.sort_values(ascending=False).index:
            lacks = missing_types(labels, datasets, d, [e for e in row.index if e != d], ignore)
            if not lacks:
                sources[str(p)] = str(d)
                break
            passed.setdefault(str(p), {})[str(d)] = lacks
    return sources, passed


def restrict_to_sources(protein: np.ndarray, datasets: np.ndarray, names: Sequence[str],
                        sources: dict[str, str]) -> None:
    """Set, in place, each sourced protein to NaN (unmeasured) in every cell outside its source dataset."""
    cols = {j: sources[str(p)] for j, p in enumerate(names) if str(p) in sources}
    for start in range(0, len(protein), _BLOCK):
        block, ds = protein[start:start + _BLOCK], datasets[start:start + _BLOCK]
        for j, src in cols.items():
            block[ds != src, j] = np.nan
    if hasattr(protein, "flush"):
        protein.flush()


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
    lab = None if labels is None else np.asarray(labels, dtype=object)
    sources, passed = best_sources(rel, lab, datasets, ignore_labels)
    restrict_to_sources(protein, datasets, names, sources)
    for p, row in rel.iterrows():
        if row.notna().sum() < 2:
            continue
        scores = ", ".join(f"{d} {v:.2f}" for d, v in row.dropna().items())
        skipped = "; ".join(f"not {d}: lacks {', '.join(t[:3])}" for d, t in passed.get(str(p), {}).items())
        log.info("pooled reference: %s imputed from %s (split-half r: %s)%s", p,
                 f"{sources[str(p)]} cells only" if str(p) in sources else "every dataset", scores,
                 f"; {skipped}" if skipped else "")
    return {"mode": mode, "sources": sources, "passed_over": passed,
            "reliability": {str(p): {str(d): round(float(v), 4) for d, v in row.dropna().items()}
                            for p, row in rel.iterrows()}}
