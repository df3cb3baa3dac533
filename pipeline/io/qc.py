"""Per-cell count thresholds and a QC summary accumulated chunk by chunk during ingest."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _median(chunks: list[np.ndarray]) -> float:
    return float(np.median(np.concatenate(chunks))) if chunks else 0.0


class QCAccumulator:
    """Filter cells by minimum total counts per modality and collect summary numbers.

    Parameters
    ----------
    n_genes, n_proteins
        Feature counts (for per-feature totals).
    min_counts_rna, min_counts_prot
        Cells with fewer total counts in that modality are dropped (0 keeps every cell).
    """

    def __init__(self, n_genes: int, n_proteins: int, *, min_counts_rna: float = 0,
                 min_counts_prot: float = 0) -> None:
        self.min_counts_rna, self.min_counts_prot = float(min_counts_rna), float(min_counts_prot)
        self.gene_counts = np.zeros(n_genes, np.float64)
        self.gene_cells = np.zeros(n_genes, np.int64)
        self.prot_counts = np.zeros(n_proteins, np.float64)
        self.prot_cells = np.zeros(n_proteins, np.int64)
        self.n_seen = 0
        self.dropped_rna = 0
        self.dropped_prot = 0
        self.zero_rna = 0
        self.zero_prot = 0
        self.nnz_rna = 0
        self.nnz_prot = 0
        self._tot_rna: list[np.ndarray] = []
        self._tot_prot: list[np.ndarray] = []
        self._ngenes: list[np.ndarray] = []

    def filter(self, rna: sp.csr_matrix, prot: np.ndarray, obs: pd.DataFrame
               ) -> tuple[sp.csr_matrix, np.ndarray, pd.DataFrame]:
        """Drop cells below the thresholds, record statistics of the kept cells, add QC columns to ``obs``."""
        tr = np.asarray(rna.sum(axis=1), dtype=np.float64).ravel()
        tp = prot.sum(axis=1, dtype=np.float64)
        low_r, low_p = tr < self.min_counts_rna, tp < self.min_counts_prot
        self.n_seen += len(tr)
        self.dropped_rna += int(low_r.sum())
        self.dropped_prot += int((low_p & ~low_r).sum())
        keep = ~(low_r | low_p)
        if not keep.all():
            rna, prot, obs, tr, tp = rna[keep], prot[keep], obs.iloc[np.flatnonzero(keep)], tr[keep], tp[keep]
        ng = np.diff(rna.indptr)
        self.zero_rna += int((tr == 0).sum())
        self.zero_prot += int((tp == 0).sum())
        self.nnz_rna += int(rna.nnz)
        self.nnz_prot += int(np.count_nonzero(prot))
        self.gene_counts += np.asarray(rna.sum(axis=0), dtype=np.float64).ravel()
        # cells per gene as a sparse mat-vec on a 0/1 copy (several times faster than bincount on indices)
        expressed = sp.csr_matrix(((rna.data != 0).astype(np.float32), rna.indices, rna.indptr), shape=rna.shape)
        self.gene_cells += np.asarray(expressed.sum(axis=0), dtype=np.float64).ravel().astype(np.int64)
        self.prot_counts += prot.sum(axis=0, dtype=np.float64)
        self.prot_cells += (prot != 0).sum(axis=0)
        self._tot_rna.append(tr)
        self._tot_prot.append(tp)
        self._ngenes.append(ng)
        obs = obs.copy()
        obs["total_counts_rna"] = tr.astype(np.float32)
        obs["n_genes_by_counts"] = ng.astype(np.int32)
        obs["total_counts_prot"] = tp.astype(np.float32)
        return rna, prot, obs

    @property
    def n_kept(self) -> int:
        """Number of cells added so far."""
        return int(sum(len(t) for t in self._tot_rna))

    def feature_frames(self, genes: pd.DataFrame, proteins: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Feature metadata with ``total_counts`` and ``n_cells_by_counts`` columns added."""
        genes, proteins = genes.copy(), proteins.copy()
        genes["total_counts"], genes["n_cells_by_counts"] = self.gene_counts, self.gene_cells
        proteins["total_counts"], proteins["n_cells_by_counts"] = self.prot_counts, self.prot_cells
        return genes, proteins

    def summary(self) -> dict[str, Any]:
        """Flat numbers for ``uns['qc']``."""
        n = self.n_kept
        g, p = len(self.gene_counts), len(self.prot_counts)
        return {
            "n_cells_paired": int(self.n_seen),
            "n_cells": n,
            "n_genes": g,
            "n_proteins": p,
            "min_counts_rna": self.min_counts_rna,
            "min_counts_prot": self.min_counts_prot,
            "n_cells_below_min_counts_rna": int(self.dropped_rna),
            "n_cells_below_min_counts_prot": int(self.dropped_prot),
            "n_cells_zero_rna": int(self.zero_rna),
            "n_cells_zero_prot": int(self.zero_prot),
            "n_genes_zero_counts": int((self.gene_counts == 0).sum()),
            "n_proteins_zero_counts": int((self.prot_counts == 0).sum()),
            "median_counts_rna": _median(self._tot_rna),
            "median_counts_prot": _median(self._tot_prot),
            "median_genes_per_cell": _median(self._ngenes),
            "total_counts_rna": float(self.gene_counts.sum()),
            "total_counts_prot": float(self.prot_counts.sum()),
            "nnz_rna": int(self.nnz_rna),
            "nnz_prot": int(self.nnz_prot),
            "sparsity_rna": float(1 - self.nnz_rna / (n * g)) if n and g else 0.0,
            "sparsity_prot": float(1 - self.nnz_prot / (n * p)) if n and p else 0.0,
        }
