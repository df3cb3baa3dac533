"""Choosing the model's genes on the training cells.

Highly variable genes (per dataset for a store pooled on the union of several datasets' genes) and the genes most
correlated with each protein; :mod:`omicsclip.model.preprocess` fits the rest.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from omicsclip.errors import InputError
from omicsclip.io.panels import dataset_label

log = logging.getLogger(__name__)

MAX_PROTEIN_GENES = 256  # preprocess.protein_genes: at most this many genes in all (large antibody panels)

__all__ = ["MAX_PROTEIN_GENES", "panel_hvg", "select_hvg", "select_protein_genes"]


def select_hvg(lognorm: sp.csr_matrix, n_hvg: int) -> np.ndarray:
    """Positions of the ``n_hvg`` most variable genes (scanpy, flavor "seurat"), in input order.

    ``n_hvg == 0`` or ``n_hvg >=`` the number of expressed genes keeps every expressed gene.
    """
    lognorm = sp.csr_matrix(lognorm)
    expressed = np.flatnonzero(np.bincount(lognorm.indices[lognorm.data > 0], minlength=lognorm.shape[1]))
    if expressed.size == 0:
        raise InputError("preprocess: no gene has any counts in the training cells")
    if n_hvg == 0 or n_hvg >= expressed.size:
        return expressed
    import anndata as ad  # scanpy is slow to import: only when genes are actually selected
    import scanpy as sc

    adata = ad.AnnData(X=lognorm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(adata, n_top_genes=n_hvg, flavor="seurat", subset=False)
    return np.flatnonzero(adata.var["highly_variable"].to_numpy())


def panel_hvg(lognorm: sp.csr_matrix, n_hvg: int, codes: np.ndarray, table: np.ndarray,
              names: Sequence[str] | None = None) -> np.ndarray:
    """Union of each training dataset's highly variable genes, chosen among its cells and measured genes.

    ``names``: the datasets' names (rows of ``table``), for the log; else their numbers.
    """
    picked: set[int] = set()
    for i in range(table.shape[0]):
        cells, cols = np.flatnonzero(codes == i), np.flatnonzero(table[i])
        if cells.size == 0 or cols.size == 0:
            continue
        hv = cols[select_hvg(lognorm[cells][:, cols], n_hvg)]
        log.info("preprocess: %d highly variable genes among the %d genes of dataset %s", hv.size, cols.size,
                 dataset_label(names, i))
        picked.update(int(g) for g in hv)
    if not picked:
        raise InputError("preprocess: no gene has any counts in the training cells")
    return np.array(sorted(picked), dtype=np.int64)


def select_protein_genes(x: np.ndarray, prot: np.ndarray, k: int, *, max_genes: int = MAX_PROTEIN_GENES,
                         chunk: int = 2048) -> np.ndarray:
    """Per protein, the ``k`` genes whose values correlate most with it (absolute Pearson ``r``).

    Parameters
    ----------
    x
        Training cells x genes (the scaled model-gene values).
    prot
        Training cells x proteins (CLR values).
    k
        Genes per protein.
    max_genes
        At most this many genes in all (large panels): then every protein's best gene first, then every
        protein's second best, and so on, until the budget is spent.
    chunk
        Cells per chunk of the sums (bounded memory: no centred copy of ``x``).

    Returns
    -------
    np.ndarray
        Column positions in ``x``: protein by protein, each protein's genes by decreasing ``|r|``, a gene picked
        for an earlier protein not repeated. Genes uncorrelated with a protein (``r = 0``: a constant gene or
        protein) are never picked for it.
    """
    n, k = x.shape[0], min(int(k), x.shape[1])
    y = np.asarray(prot, np.float64)
    if np.isnan(y).any():  # unmeasured (pooled panels): centred on the measured cells, then 0 = no evidence
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            y = np.nan_to_num(y - np.nanmean(y, axis=0))
    else:
        y = y - y.mean(axis=0)
    mean = np.zeros(x.shape[1])
    for start in range(0, n, chunk):
        mean += np.asarray(x[start : start + chunk], np.float64).sum(axis=0)
    mean /= max(n, 1)
    sxx = np.zeros(x.shape[1])
    sxy = np.zeros((x.shape[1], y.shape[1]))
    for start in range(0, n, chunk):
        xc = np.asarray(x[start : start + chunk], np.float64) - mean
        sxx += (xc * xc).sum(axis=0)
        sxy += xc.T @ y[start : start + chunk]
    x_sd, y_sd = np.sqrt(sxx / max(n, 1)), y.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(sxy / max(n, 1) / np.outer(x_sd, y_sd))
    r[~np.isfinite(r)] = 0.0
    r[x_sd < 1e-8] = 0.0
    r[:, y_sd < 1e-8] = 0.0
    ranked = [[int(g) for g in np.argsort(-r[:, p], kind="stable")[:k] if r[g, p] > 1e-6] for p in range(r.shape[1])]
    budget: set[int] = set()
    for rank in range(k):  # round robin over proteins, so a budget cut keeps every protein's best genes
        for genes in ranked:
            if rank < len(genes) and len(budget) < max_genes:
                budget.add(genes[rank])
    picked = dict.fromkeys(g for genes in ranked for g in genes if g in budget)
    return np.fromiter(picked, dtype=np.int64, count=len(picked))
