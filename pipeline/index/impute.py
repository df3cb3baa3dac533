"""Neighbour aggregation for query cells: imputed protein and transferred labels (pure numpy).

Weights are a softmax of the cosine similarities divided by a temperature (``temperature <= 0`` gives equal
weights), so close neighbours count more and the weights of every query cell sum to one.
"""

from __future__ import annotations

import numpy as np

_IMPUTE_BLOCK = 2048  # query cells per step of :func:`impute` (2048 x k=20 x 100 proteins: 16 MB per temporary)


def neighbour_weights(sims: np.ndarray, temperature: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-row softmax of ``sims / temperature`` (n x k, rows sum to 1); equal weights when ``temperature <= 0``.

    Parameters
    ----------
    sims
        Similarities of each query cell to its neighbours (n x k).
    temperature
        Softmax temperature in similarity units (e.g. 0.05 sharpens, 1.0 is nearly uniform).
    valid
        Optional boolean mask (n x k) of real neighbours (approximate indices may return fewer than k);
        invalid entries get weight 0. A row without any valid neighbour gets all-zero weights.
    """
    sims = np.asarray(sims, dtype=np.float64)
    valid = np.ones(sims.shape, bool) if valid is None else np.asarray(valid, bool)
    if temperature <= 0:
        w = valid.astype(np.float64)
    else:
        s = np.where(valid, sims, -np.inf)
        top = s.max(axis=1, keepdims=True)
        w = np.exp(np.where(valid, (s - np.where(np.isfinite(top), top, 0.0)) / temperature, -np.inf))
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def impute(reference: np.ndarray, pos: np.ndarray, weights: np.ndarray, *,
           return_counts: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Weighted mean of the neighbours' reference profiles, per feature over the neighbours that measured it.

    Parameters
    ----------
    reference
        Reference profiles (N x P), e.g. CLR protein; may be a memory map. NaN marks a value that was not
        measured (a reference pooled from datasets with different antibody panels).
    pos
        Neighbour positions in ``reference`` (n x k).
    weights
        Neighbour weights (n x k), rows summing to one.

    return_counts
        Also return, per cell and feature, how many neighbours with a positive weight have it (n x P int32).

    Returns
    -------
    numpy.ndarray
        n x P float32. Per feature, the weights of the neighbours that have it are renormalised to sum to one;
        NaN where no neighbour with a positive weight has it. With ``return_counts``: ``(imputed, counts)``.
    """
    out = np.empty((pos.shape[0], reference.shape[1]), np.float32)
    counts = np.empty(out.shape, np.int32) if return_counts else None
    for start in range(0, len(out), _IMPUTE_BLOCK):  # the n x k x P temporaries stay bounded whatever the chunk
        sl = slice(start, start + _IMPUTE_BLOCK)
        out[sl] = _impute_block(reference, pos[sl], weights[sl], None if counts is None else counts[sl])
    return out if counts is None else (out, counts)


def _impute_block(reference: np.ndarray, pos: np.ndarray, weights: np.ndarray,
                  counts: np.ndarray | None = None) -> np.ndarray:
    n, k = pos.shape
    order = np.argsort(pos, axis=None, kind="stable")  # sorted reads are kinder to memory maps
    flat = np.empty((n * k, reference.shape[1]), np.float32)
    flat[order] = np.asarray(reference[pos.ravel()[order]], dtype=np.float32)
    prof = flat.reshape(n, k, -1)
    w = weights.astype(np.float32)
    has = ~np.isnan(prof)
    if has.all():
        if counts is not None:  # every neighbour has every feature
            counts[:] = (w > 0).sum(axis=1, dtype=np.int32)[:, None]
        return np.einsum("nk,nkp->np", w, prof)
    if counts is not None:
        counts[:] = np.einsum("nk,nkp->np", (w > 0).astype(np.int32), has.astype(np.int32))
    total = np.einsum("nk,nkp->np", w, np.where(has, prof, np.float32(0)))
    norm = np.einsum("nk,nkp->np", w, has.astype(np.float32))
    return np.divide(total, norm, out=np.full(total.shape, np.nan, np.float32), where=norm > 0)


def fill_unmeasured(imputed: np.ndarray, reference: np.ndarray, pos: np.ndarray, sims: np.ndarray, *, k: int,
                    temperature: float, need_k: bool = False) -> int:
    """Fill, in place, the NaN entries of ``imputed`` from the ``k`` nearest neighbours that measured the feature.

    In a reference pooled from several antibody panels, a query cell whose ``impute_k`` neighbours all come from
    datasets without some protein gets NaN for it (:func:`impute`). Given a wider search of the same cells
    (``pos``, ``sims``: n x K, K > k, nearest first; ``pos < 0`` for no neighbour), each such entry becomes the
    weighted mean (:func:`neighbour_weights`) over the first ``k`` of those neighbours that measured the feature.

    Parameters
    ----------
    imputed
        n x P imputation of the same cells (:func:`impute`), changed in place.
    reference
        Reference profiles (N x P), NaN where not measured.
    pos, sims
        The wider neighbour search (n x K).
    k, temperature
        ``query.impute_k`` and ``query.temperature``.
    need_k
        Fill only the entries for which ``k`` of the K neighbours measured the feature (the others are left for a
        deeper search); otherwise fill from as many as there are (at least one).

    Returns
    -------
    int
        The entries still NaN.
    """
    valid = pos >= 0
    prof = np.asarray(reference[np.where(valid, pos, 0)], dtype=np.float32)  # n x K x P
    has = ~np.isnan(prof) & valid[:, :, None]
    first = has & (np.cumsum(has, axis=1, dtype=np.int32) <= k)  # the first k neighbours that measured each feature
    for j in np.flatnonzero(np.isnan(imputed).any(axis=0)):
        found = first[:, :, j].sum(axis=1)
        rows = np.flatnonzero(np.isnan(imputed[:, j]) & (found >= (k if need_k else 1)))
        if rows.size:
            w = neighbour_weights(sims[rows], temperature, first[rows, :, j])
            imputed[rows, j] = np.einsum("nk,nk->n", w, np.where(first[rows, :, j], prof[rows, :, j], 0.0))
    return int(np.isnan(imputed).sum())


def confidence(sims: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-cell confidence of an imputation: the weighted mean similarity of the neighbours used (float32)."""
    return (np.asarray(sims, np.float64) * weights).sum(axis=1).astype(np.float32)


def vote(codes: np.ndarray, n_classes: int, pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted label votes of the neighbours.

    Parameters
    ----------
    codes
        Integer label code of every reference cell (N,), ``-1`` for unlabelled cells (they do not vote).
    n_classes
        Number of label classes.
    pos, weights
        Neighbour positions and weights (n x k).

    Returns
    -------
    numpy.ndarray
        n x ``n_classes`` vote fractions; rows sum to 1 unless no neighbour is labelled (then all zero).
    """
    c = np.asarray(codes)[pos]
    w = np.where(c >= 0, weights, 0.0)
    out = np.zeros((pos.shape[0], n_classes), np.float64)
    rows = np.repeat(np.arange(pos.shape[0]), pos.shape[1])
    np.add.at(out, (rows, np.where(c >= 0, c, 0).ravel()), w.ravel())
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.zeros_like(out), where=total > 0).astype(np.float32)


def voting_weight(codes: np.ndarray, pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per cell, the share of its neighbours' weight that :func:`vote` counted (neighbours with a label code).

    A cell among mostly ``unknown`` neighbours gets a low share however one-sided their few votes are.
    """
    w = np.asarray(weights, np.float64)
    voted = np.where(np.asarray(codes)[pos] >= 0, w, 0.0).sum(axis=1)
    total = w.sum(axis=1)
    return np.divide(voted, total, out=np.zeros_like(total), where=total > 0).astype(np.float32)


def knn_impute(query: np.ndarray, reference: np.ndarray, values: np.ndarray, *, k: int,
               temperature: float) -> np.ndarray:
    """Impute values the way ``omicsclip query`` does, with an exact search.

    Each query's ``k`` most similar reference rows (a flat inner-product faiss index over the unit-norm
    reference, searched in chunks), weighted by :func:`neighbour_weights`, averaged by :func:`impute`.

    Parameters
    ----------
    query, reference
        Unit-norm embeddings (n x d, N x d).
    values
        Reference profiles to average (N x P), e.g. CLR protein (NaN: not measured, see :func:`impute`).
    k, temperature
        ``query.impute_k`` and ``query.temperature``.
    """
    from omicsclip.index.faiss_index import IndexParams, build_index, search

    reference = np.ascontiguousarray(reference, dtype=np.float32)
    index = build_index(reference, IndexParams(kind="flat"), use_gpu=False)  # exact search
    sims, pos = search(index, np.ascontiguousarray(query, dtype=np.float32), k)
    return impute(values, pos, neighbour_weights(sims, temperature))
