"""A calibrated per-cell mapping score: how much a query cell looks like the reference cells (conformal p-value).

The statistic of a cell is the cosine similarity of its ``k``-th nearest reference cell in one modality's index
(:func:`neighbour_statistic`; the k-th-neighbour distance of deep nearest-neighbour OOD detection, Sun et al.
2022). On pbmc10k with one type left out of the reference (``bench/ood.py``) it ranks that type's cells below
the other types' new cells better than the mean of the top ``k`` or the top-1 similarity, and better with
``k = 50`` than with 10 or 20: a few reference cells resembling the missing type (doublets, mislabelled or
unlabelled cells) give it a handful of close neighbours, not fifty. The cost: a reference type with fewer than
``k`` cells scores lower for its own new cells. At index time it is computed for a seeded sample of reference cells against the
*other* reference cells (leave-one-out: ``k + 1`` neighbours searched, the cell itself dropped) and the sorted
sample is stored with the index, one row per indexed modality (:class:`MappingCalibration`). At query time the
score of a cell is the fraction of that reference sample whose statistic is at most the cell's (the empirical
CDF, as a conformal p-value ``(1 + #{s_ref <= s}) / (m + 1)``, :meth:`MappingCalibration.score`).

What the calibration means: for a query cell drawn like the reference cells (exchangeable with them, same model
and same kind of data), the score is uniform on (0, 1] and ``score <= alpha`` happens with probability at most
``alpha``; so ``out_of_reference = score <= query.ood_alpha`` flags about ``alpha`` of such cells. A cell of a
type absent from the reference has no close reference neighbours and a score near 0. Two caveats:

- reference cells are usually cells the model trained on, and a whole query batch from another lab is shifted
  relative to the reference; both make even in-type query cells less similar to the reference than reference
  cells are to each other, so the absolute calibration is conservative (more cells flagged than ``alpha``).
  The ranking is unaffected by such a global shift: the score is validated by its AUROC for a held-out type
  (``bench/ood.py``), and a shifted batch is better read by ranks (e.g. the lowest-scoring cells of a query)
  than by the flag. A per-query recentring of the score would only move the flag, not the ranking, and is
  deliberately not offered until it is validated on cross-lab data.
- the score is about the neighbourhood in the embedding space, so a type the model embeds on top of a reference
  type (e.g. one it never learnt to tell apart) is not detected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omicsclip.errors import InputError
from omicsclip.index.faiss_index import search

log = logging.getLogger(__name__)

STATISTIC = "kth_cosine"


def neighbour_statistic(sims: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Return each row's similarity to its ``k``-th (last valid) neighbour (float64; NaN for a row without any).

    Parameters
    ----------
    sims
        Similarities of each cell to its ``k`` nearest reference cells, in decreasing order (n x k).
    valid
        Optional mask of real neighbours (approximate indices may return fewer than ``k``, marked by position -1);
        a row with fewer uses its last valid one.
    """
    sims = np.asarray(sims, np.float64)
    valid = np.ones(sims.shape, bool) if valid is None else np.asarray(valid, bool)
    last = sims.shape[1] - 1 - np.argmax(valid[:, ::-1], axis=1)
    out = sims[np.arange(len(sims)), last]
    return np.where(valid.any(axis=1), out, np.nan)


def calibration_sample(n: int, max_cells: int, seed: int) -> np.ndarray:
    """Return the sorted positions of a seeded sample of at most ``max_cells`` of ``n`` reference cells."""
    if n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))


def leave_one_out(index: Any, x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Return :func:`neighbour_statistic` of reference cells ``rows`` against the other reference cells.

    Parameters
    ----------
    index
        The faiss index over all reference embeddings ``x`` (the one queries search, so approximate indices are
        calibrated with their own approximation).
    x
        The indexed embeddings (N x d), row = position in ``index``.
    rows
        Positions of the sampled reference cells.
    k
        Neighbours of the statistic; ``k + 1`` are searched and the cell itself is dropped.

    Returns
    -------
    numpy.ndarray
        Sorted statistics of the sample (float32; -1, the least cosine similarity, for a cell without neighbours).
    """
    out = []
    for start in range(0, len(rows), 8192):
        r = rows[start:start + 8192]
        sims, pos = search(index, np.ascontiguousarray(x[r], dtype=np.float32), k + 1)
        is_self = pos == r[:, None]
        # drop the cell itself; where the search missed it (approximate index, duplicates) drop the last neighbour
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
        keep = np.ones(pos.shape, bool)
        keep[np.arange(len(r)), drop] = False
        sims, pos = sims[keep].reshape(len(r), k), pos[keep].reshape(len(r), k)
        out.append(neighbour_statistic(sims, pos >= 0))
    # a cell whose search found no other cell (approximate index) is as unlike the rest as cosine allows
    return np.sort(np.nan_to_num(np.concatenate(out), nan=-1.0)).astype(np.float32)


@dataclass(frozen=True)
class MappingCalibration:
    """The reference sample of the mapping statistic, per indexed modality (what :meth:`score` compares to).

    Attributes
    ----------
    k
        Neighbours of the statistic (the query searches at least this many in the same-modality index).
    null
        ``{modality: sorted statistics of the reference sample}``.
    seed
        Seed of the reference sample (``index.seed``).
    """

    k: int
    null: Mapping[str, np.ndarray]
    seed: int = 0

    def to_array(self, modalities: Sequence[str]) -> np.ndarray:
        """Return the samples as one ``modalities x m`` float32 array (the file stored with the index)."""
        return np.stack([np.asarray(self.null[m], np.float32) for m in modalities])

    def to_meta(self, modalities: Sequence[str], file: str) -> dict[str, Any]:
        """Return what ``meta.json`` records under ``mapping``."""
        return {"statistic": STATISTIC, "k": self.k, "n_sample": int(self.to_array(modalities).shape[1]),
                "modalities": list(modalities), "seed": self.seed, "file": file}

    @classmethod
    def read(cls, path: Path, meta: Mapping[str, Any] | None) -> MappingCalibration | None:
        """Read the calibration file ``path`` described by ``meta.json``'s ``mapping`` (``None``: an older index).

        Raises
        ------
        InputError
            An unreadable file, or one that disagrees with ``meta``.
        """
        if meta is None:
            return None
        try:
            arr = np.load(path)
        except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError for bad headers
            raise InputError(f"{path}: unreadable ({type(exc).__name__})") from None
        return cls.from_array(arr, meta, where=str(path))

    @classmethod
    def from_array(cls, arr: np.ndarray, meta: Mapping[str, Any], *, where: str) -> MappingCalibration:
        """Rebuild the calibration from its stored array and its ``meta.json`` entry; refuse a mismatch."""
        mods = list(meta["modalities"])  # meta.json's mapping entry was validated by refmeta.check_meta
        if (arr.ndim != 2 or arr.shape != (len(mods), meta["n_sample"]) or arr.dtype != np.float32
                or not np.isfinite(arr).all()):
            raise InputError(f"{where}: mapping calibration of shape {arr.shape} ({arr.dtype}) does not match "
                             f"meta.json ({len(mods)} x {meta['n_sample']} finite float32); rebuild the index")
        return cls(k=int(meta["k"]), null={m: np.asarray(arr[i], np.float32) for i, m in enumerate(mods)},
                   seed=int(meta.get("seed", 0)))

    def score(self, modality: str, statistic: np.ndarray) -> np.ndarray:
        """Return the conformal p-value of each query cell's statistic against ``modality``'s reference sample.

        ``(1 + #{reference statistics <= s}) / (m + 1)`` in (0, 1] (float32); NaN where ``s`` is NaN.
        """
        null = np.asarray(self.null[modality], np.float64)
        s = np.asarray(statistic, np.float64)
        rank = np.searchsorted(null, np.where(np.isfinite(s), s, -np.inf), side="right")
        return np.where(np.isfinite(s), (1.0 + rank) / (len(null) + 1.0), np.nan).astype(np.float32)
