"""In-memory paired RNA + protein data: the one shape every reader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass
class PairedData:
    """Raw paired counts for the same cells.

    Attributes
    ----------
    rna
        cells x genes raw counts, CSR float32; ``None`` when the input has no RNA (query inputs only).
    prot
        cells x proteins raw counts, dense float32; ``None`` when the input has no protein.
    obs
        Per-cell metadata; the index holds the barcodes (unique).
    genes, proteins
        Per-feature metadata; the index holds feature names (unique within a modality).
    uns
        Free-form metadata (provenance, QC summary).
    """

    rna: sp.csr_matrix | None
    prot: np.ndarray | None
    obs: pd.DataFrame
    genes: pd.DataFrame
    proteins: pd.DataFrame
    uns: dict[str, Any] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.obs)

    @property
    def gene_names(self) -> list[str]:
        """Gene names in column order."""
        return [str(g) for g in self.genes.index]

    @property
    def protein_names(self) -> list[str]:
        """Protein names in column order."""
        return [str(p) for p in self.proteins.index]

    @property
    def barcodes(self) -> list[str]:
        """Cell barcodes in row order."""
        return [str(b) for b in self.obs.index]

    def subset(self, idx: np.ndarray | slice) -> PairedData:
        """Return the cells ``idx`` (positions or boolean mask), features unchanged."""
        obs = self.obs.iloc[idx]
        return PairedData(
            rna=None if self.rna is None else self.rna[idx],
            prot=None if self.prot is None else self.prot[idx],
            obs=obs.copy(),
            genes=self.genes,
            proteins=self.proteins,
            uns=self.uns,
        )

    def to_anndata(self):
        """AnnData in the shared-data layout: X = RNA counts, obsm["protein"] = protein DataFrame."""
        import anndata as ad

        a = ad.AnnData(X=self.rna, obs=self.obs.copy(), var=self.genes.copy())
        a.obsm["protein"] = pd.DataFrame(self.prot, index=self.obs.index, columns=self.proteins.index)
        return a
