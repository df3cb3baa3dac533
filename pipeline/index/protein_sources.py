"""Which dataset of a pooled reference each protein is imputed from (``index.protein_sources``).

A reference pooled from several labs holds the same protein measured with different antibodies, chemistries and
titres, and one lab's measurement can be much noisier than another's (the 5' PBMC set's CD4 is zero in ~70 % of its
cells). Averaging neighbours across datasets then mixes a good measurement with a poor one, on different CLR
scales (``bench/pooled_diagnose.py``). With ``best`` (the default) a protein measured by two or more datasets is
kept only in the dataset whose own cells predict it best from the embedding; the other datasets' values of it
become unmeasured (NaN), so ``omicsclip query`` imputes it from the nearest cells of that dataset.

A dataset's *reliability* for a protein: half of its cells (up to ``MAX_QUERIES``) impute the protein from the
other half (up to ``MAX_REFERENCE``) as ``omicsclip query`` does (``K`` neighbours, softmax ``TEMPERATURE``, exact
search), and the Pearson correlation of imputed and measured values is the score. Only reference cells take part,
a sample of fixed size per dataset (the cost does not grow with the atlas), seeded by ``index.seed``.
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
MIN_CELLS = 20  # a dataset with fewer cells measuring a protein gets no reliability for it (never its source)
_BLOCK = 65_536  # reference rows masked at a time (the protein may be a memory map)


def protein_reliability(read_embedding: Callable[[np.ndarray], np.ndarray], protein: np.ndarray,
                        datasets: np.ndarray, names: Sequence[str], *, seed: int = 0) -> pd.DataFrame:
    """Split-half reliability of every protein in every dataset (proteins x datasets; NaN: not measured there).

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
    for d in labels:
        cells = rng.permutation(np.flatnonzero(datasets == d))
        half = len(cells) // 2
        q, r = np.sort(cells[:half][:MAX_QUERIES]), np.sort(cells[half:][:MAX_REFERENCE])
        if min(len(q), len(r)) < MIN_CELLS:
            continue
        truth, values = np.asarray(protein[q], np.float64), np.asarray(protein[r], np.float32)
        cols = np.flatnonzero((np.isfinite(truth).sum(0) >= MIN_CELLS) & (np.isfinite(values).sum(0) >= MIN_CELLS))
        if not cols.size:
            continue
        pred = knn_impute(read_embedding(q), read_embedding(r), values[:, cols], k=K, temperature=TEMPERATURE)
        for c, j in enumerate(cols):
            ok = np.isfinite(truth[:, j]) & np.isfinite(pred[:, c])
            with warnings.catch_warnings():  # a constant protein: no correlation (NaN), never a source
                warnings.simplefilter("ignore", RuntimeWarning)
                rel.iloc[j, labels.index(d)] = np.corrcoef(truth[ok, j], pred[ok, c])[0, 1] if ok.sum() > 2 else np.nan
    return rel


def best_sources(rel: pd.DataFrame) -> dict[str, str]:
    """For each protein with a reliability in two or more datasets, the dataset with the highest one."""
    shared = rel[rel.notna().sum(axis=1) >= 2]
    return {str(p): str(row.idxmax()) for p, row in shared.iterrows()}


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
                          read_embedding: Callable[[np.ndarray], np.ndarray], *, mode: str,
                          seed: int = 0) -> dict[str, Any] | None:
    """Apply ``index.protein_sources`` to a reference's CLR protein (in place); return what to record, or None.

    Nothing happens (``None``) with ``mode="all"``, without a dataset per cell, or with a single dataset.
    """
    if mode not in MODES:
        from omicsclip.errors import InputError

        raise InputError(f"index.protein_sources={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "all" or datasets is None:
        return None
    datasets = np.asarray([str(d) for d in datasets], dtype=object)
    if len(set(datasets)) < 2:
        return None
    rel = protein_reliability(read_embedding, protein, datasets, names, seed=seed)
    sources = best_sources(rel)
    restrict_to_sources(protein, datasets, names, sources)
    for p, src in sources.items():
        others = ", ".join(f"{d} {v:.2f}" for d, v in rel.loc[p].dropna().items() if d != src)
        log.info("pooled reference: %s imputed from %s cells only (split-half r %.2f; %s)", p, src,
                 rel.loc[p, src], others)
    return {"mode": mode, "sources": sources,
            "reliability": {str(p): {str(d): round(float(v), 4) for d, v in row.dropna().items()}
                            for p, row in rel.iterrows()}}
