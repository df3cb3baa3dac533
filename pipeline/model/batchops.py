"""Batch operations on the device, torch only: CSR row gathers, count thinning, the count transform.

These are the pieces of the training data pipeline that run per batch; they import nothing but torch so that
``bench/gpu_train.py`` measures exactly the code that training runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


@dataclass
class RawBatch:
    """Raw counts of ``n`` cells on the device, RNA in COO form (row, col, val) over the model genes.

    Attributes
    ----------
    n
        Number of cells.
    row, col, val
        Non-zero RNA counts: cell (sorted), model gene, count.
    other
        Per-cell total count of the genes outside the model.
    prot
        Protein counts, cells x proteins (dense).
    """

    n: int
    row: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    other: torch.Tensor  # per-cell counts of genes outside the model
    prot: torch.Tensor  # n x proteins, dense


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: count thinning and feature dropout.

    The defaults are "no augmentation" (training takes the ``train`` config section's values).

    Attributes
    ----------
    thinning
        Keep each count with probability ``U(thinning, 1)``, drawn per cell and modality (1 = off).
    feature_dropout
        Fraction of the RNA input genes set to 0.
    prot_feature_dropout
        The same for proteins, separately: a panel of a few antibodies loses much more with each dropped feature.
    """

    thinning: float = 1.0
    feature_dropout: float = 0.0
    prot_feature_dropout: float = 0.0

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return self.thinning < 1.0 or self.feature_dropout > 0.0 or self.prot_feature_dropout > 0.0


def gather_rows(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, other: torch.Tensor,
                prot: torch.Tensor, idx: torch.Tensor) -> RawBatch:
    """Rows ``idx`` of a CSR matrix (plus the per-cell ``other`` counts and dense ``prot``) as a raw batch.

    Index operations only (no host round trip besides the size of the output).
    """
    starts = indptr[idx]
    lens = indptr[idx + 1] - starts
    n = idx.numel()
    rows = torch.repeat_interleave(torch.arange(n, device=idx.device), lens)
    first = torch.cumsum(lens, 0) - lens
    pos = starts[rows] + (torch.arange(rows.numel(), device=idx.device) - first[rows])
    return RawBatch(n=n, row=rows, col=indices[pos].long(), val=values[pos], other=other[idx], prot=prot[idx])


def _keep_prob(n: int, low: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (1.0 - low) * torch.rand(n, generator=gen, device=device)


def thin_counts(counts: torch.Tensor, keep: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Binomial thinning: each count ``c`` -> ``Binomial(c, keep)`` (``keep`` broadcast to ``counts``)."""
    counts = counts.float()
    return torch.binomial(counts, keep.float().expand_as(counts).contiguous(), generator=gen)


class CountTransform:
    """Raw counts -> model inputs, on one device.

    RNA: ``log1p(counts / lib * target_sum)``, optional ``(x - mean) / std`` clipped to ``+-max_value``, optional
    projection on fitted principal axes (``rna_proj``, components x genes). Protein: per-cell CLR over the present
    proteins, optional ``(x - mean) / std``. Features marked absent are 0 (before any projection).
    """

    def __init__(self, *, n_genes: int, target_sum: float, max_value: float, rna_mean: torch.Tensor | None = None,
                 rna_std: torch.Tensor | None = None, prot_mean: torch.Tensor | None = None,
                 prot_std: torch.Tensor | None = None, rna_proj: torch.Tensor | None = None,
                 n_proteins: int | None = None, depth: tuple[float, float, float, float] | None = None) -> None:
        self.n_genes = int(n_genes)
        self.n_proteins = n_proteins
        self.depth = depth
        self.target_sum = float(target_sum)
        self.max_value = float(max_value)
        self.rna_mean, self.rna_std = rna_mean, rna_std
        self.prot_mean, self.prot_std = prot_mean, prot_std
        self.rna_proj = rna_proj

    @property
    def rna_dim(self) -> int:
        """Width of the RNA model input."""
        return (self.n_genes if self.rna_proj is None else int(self.rna_proj.shape[0])) + (self.depth is not None)

    @property
    def prot_dim(self) -> int:
        """Width of the protein model input."""
        if self.n_proteins is None:
            raise ValueError("CountTransform: n_proteins unknown")
        return self.n_proteins + (self.depth is not None)

    def _with_depth(self, x: torch.Tensor, total: torch.Tensor, mean: float, std: float) -> torch.Tensor:
        """Append the standardised log1p of the cell's total counts (sequencing depth / cell size)."""
        d = (torch.log1p(total.float()) - mean) / std
        return torch.cat([x, d.unsqueeze(1)], dim=1)

    def rna_genes(self, counts: torch.Tensor, lib: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Turn dense raw counts into the normalised, log1p'd, scaled gene values (float32, cells x genes).

        This is the model input before its principal-axis projection and depth feature.

        Parameters
        ----------
        counts
            Raw counts, cells x model genes (dense).
        lib
            Library sizes (cells).
        present
            Mask (genes, or cells x genes) that zeroes absent genes / dropped-out features.
        """
        x = counts.float() * (self.target_sum / lib.float().clamp_min(1.0)).unsqueeze(1)
        x = torch.log1p(x)
        if self.rna_mean is not None:
            x = ((x - self.rna_mean) / self.rna_std).clamp_(-self.max_value, self.max_value)
        if present is not None:
            x = x * present.to(x.dtype)
        return x

    def rna(self, counts: torch.Tensor, lib: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Turn dense raw counts (cells x model genes) and library sizes (cells) into the RNA model input.

        The :meth:`rna_genes` values (float32), projected on the principal axes and with the depth feature where
        configured; arguments as for :meth:`rna_genes`.
        """
        x = self.rna_genes(counts, lib, present)
        if self.rna_proj is not None:
            x = x @ self.rna_proj.t()
        if self.depth is not None:
            x = self._with_depth(x, lib, self.depth[0], self.depth[1])
        return x

    def rna_sparse(self, row: torch.Tensor, col: torch.Tensor, val: torch.Tensor, lib: torch.Tensor, n: int,
                   keep: torch.Tensor | None = None) -> torch.Tensor:
        """Compute :meth:`rna` with a projection from the non-zeros only (``row`` sorted, cells ``0..n-1``).

        ``keep`` is a (genes,) present mask or a (cells, genes) feature-dropout mask.

        Zero counts all map to the same scaled value ``c_g``, so ``x @ P.T = (c * keep) @ P.T + S @ P.T`` where
        ``S`` holds ``x - c`` at the non-zeros: no dense cells x genes work unless ``keep`` (feature dropout) is
        given.
        """
        proj = self.rna_proj
        assert proj is not None
        z = torch.log1p(val.float() * (self.target_sum / lib.float().clamp_min(1.0))[row])
        if self.rna_mean is not None:
            c = (-self.rna_mean / self.rna_std).clamp(-self.max_value, self.max_value)
            z = ((z - self.rna_mean[col]) / self.rna_std[col]).clamp_(-self.max_value, self.max_value)
            delta = z - c[col]
        else:
            c, delta = None, z
        if keep is not None:  # (genes,) present mask or (cells, genes) dropout mask
            delta = delta * (keep[col] if keep.dim() == 1 else keep[row, col]).to(delta.dtype)
            base = (keep.to(proj.dtype) * c) @ proj.t() if c is not None else None
            if base is not None and base.dim() == 1:
                base = base.expand(n, -1)
        else:
            base = (c @ proj.t()).expand(n, -1) if c is not None else None
        crow = torch.zeros(n + 1, dtype=torch.int64, device=val.device)
        crow[1:] = torch.cumsum(torch.bincount(row, minlength=n), 0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            s = torch.sparse_csr_tensor(crow, col, delta, size=(n, self.n_genes), check_invariants=False)
            out = torch.sparse.mm(s, proj.t().contiguous())
        out = out if base is None else out + base
        if self.depth is not None:
            out = self._with_depth(out, lib, self.depth[0], self.depth[1])
        return out

    def prot(self, counts: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Turn dense raw protein counts (cells x model proteins) into the protein model input.

        CLR over the present proteins, scaled, with the depth feature where configured.

        Parameters
        ----------
        counts
            Raw counts, cells x model proteins.
        present
            Mask of the model proteins present in the input (``None``: all).
        """
        lp = torch.log1p(counts.float())
        if present is None:
            x = lp - lp.mean(dim=1, keepdim=True)
        else:
            m = present.to(lp.dtype)
            x = lp - (lp * m).sum(dim=1, keepdim=True) / m.sum().clamp_min(1.0)
        if self.prot_mean is not None:
            x = (x - self.prot_mean) / self.prot_std
        if present is not None:
            x = x * present.to(x.dtype)
        if self.depth is not None:
            total = (counts.float() if present is None else counts.float() * present.to(lp.dtype)).sum(dim=1)
            x = self._with_depth(x, total, self.depth[2], self.depth[3])
        return x


def model_inputs(batch: RawBatch, transform: CountTransform, aug: Augmentation | None = None,
                 gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (training) and transform a raw batch into the encoders' inputs (float32, on the batch's device).

    Thinning acts on raw counts: the model genes' counts, the per-cell total of the other genes (one binomial
    draw: the sum of independently thinned counts), and the protein counts, so that library sizes stay
    consistent. Feature dropout sets a random fraction of the *transformed* inputs (before a projection) to 0
    (= the training mean, i.e. what a missing gene looks like at inference). Draws from ``gen`` in a fixed order, so runs and resumed
    runs are repeatable.
    """
    device = batch.val.device
    val, other, prot = batch.val.float(), batch.other.float(), batch.prot.float()
    if aug is not None and aug.thinning < 1.0:
        if gen is None:
            raise ValueError("augmentation needs a generator")
        q = _keep_prob(batch.n, aug.thinning, gen, device)
        val = thin_counts(val, q[batch.row], gen)
        other = thin_counts(other, q, gen)
        qp = _keep_prob(batch.n, aug.thinning, gen, device)
        prot = thin_counts(prot, qp[:, None], gen)
    lib = torch.zeros(batch.n, device=device).index_add_(0, batch.row, val) + other
    keep_rna = keep_prot = None
    if aug is not None and (aug.feature_dropout > 0.0 or aug.prot_feature_dropout > 0.0):
        if gen is None:
            raise ValueError("augmentation needs a generator")
        if aug.feature_dropout > 0.0:
            keep_rna = torch.rand(batch.n, transform.n_genes, generator=gen, device=device) >= aug.feature_dropout
        if aug.prot_feature_dropout > 0.0:
            keep_prot = torch.rand(prot.shape, generator=gen, device=device) >= aug.prot_feature_dropout
    if transform.rna_proj is not None:
        x_rna = transform.rna_sparse(batch.row, batch.col, val, lib, batch.n, keep_rna)
    else:
        dense = torch.zeros(batch.n, transform.n_genes, device=device)
        dense[batch.row, batch.col] = val
        x_rna = transform.rna(dense, lib, keep_rna)
    x_prot = transform.prot(prot)
    if keep_prot is not None:
        x_prot = x_prot * keep_prot
    return x_rna, x_prot
