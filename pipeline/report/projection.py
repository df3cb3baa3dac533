"""2-D maps of embeddings for the report: UMAP through scanpy (``sc.pp.neighbors`` + ``sc.tl.umap``)."""

from __future__ import annotations

import warnings

import numpy as np

from omicsclip.errors import InputError

_REP = "X_report"


def umap_coords(x: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.5, seed: int = 0) -> np.ndarray:
    """2-D UMAP of the rows of ``x`` on exact cosine neighbours.

    Parameters
    ----------
    x
        Cells x dimensions (e.g. a subsample of the embeddings); at least 4 rows.
    n_neighbors
        Neighbours per cell (fewer when there are fewer cells).
    min_dist
        UMAP's ``min_dist``.
    seed
        Random seed of the layout.

    Returns
    -------
    numpy.ndarray
        Cells x 2 coordinates.
    """
    import anndata as ad
    import scanpy as sc

    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < 4:
        raise InputError(f"UMAP needs at least 4 cells, got {n}")
    adata = ad.AnnData(np.zeros((n, 0), dtype=np.float32))
    adata.obsm[_REP] = x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba/scanpy chatter on tiny inputs
        # exact (brute-force) neighbours at any size: a report draws a few thousand cells at most
        sc.pp.neighbors(adata, use_rep=_REP, metric="cosine", n_neighbors=min(n_neighbors, n - 1),
                        transformer="sklearn", random_state=seed)
        sc.tl.umap(adata, min_dist=min_dist, random_state=seed)
    return np.asarray(adata.obsm["X_umap"])
