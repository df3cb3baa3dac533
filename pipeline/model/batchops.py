"""Batch operations on the device, torch only: CSR row gathers, count thinning, the count transform.

These are the pieces of the training data pipeline that run per batch; they import nothing but torch so that
``bench/gpu_train.py`` measures exactly the code that training runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

import omicsclip.model.randbits as randbits


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
    gene_keep
        Model genes the cells measured, (genes,) for all or (cells, genes), when some were not (a store pooled on
        the union of several datasets' genes); ``None``: every cell measured every gene.
    """

    n: int
    row: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    other: torch.Tensor  # per-cell counts of genes outside the model
    prot: torch.Tensor  # n x proteins, dense
    gene_keep: torch.Tensor | None = None


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: count thinning, feature dropout, panel and gene masking, gene-wise capture shift.

    The defaults are "no augmentation" (training takes the ``train`` config section's values).

    Attributes
    ----------
    thinning
        Keep each count with probability ``U(thinning, 1)``, drawn per cell and modality (1 = off).
    feature_dropout
        Fraction of the RNA input genes set to 0.
    prot_feature_dropout
        Panel masking: the fraction of each cell's proteins treated as unmeasured (left out of its CLR, input 0),
        as for a query whose panel lacks them.
    gene_masking
        Per batch, a fraction ``f ~ U(0, gene_masking)`` of the model genes is masked for every cell of the batch,
        as for a query whose gene set lacks them (the genes' inputs set to 0 = the training mean).
    gene_shift
        Per batch, every model gene's counts are scaled by its own log-normal factor ``exp(s Z - s**2 / 2)``
        (``s = gene_shift``, ``Z ~ N(0, 1)``; mean 1, so library sizes and the depth feature do not drift), shared
        by the batch's cells (under DDP: by each rank's share of it), as another lab's or chemistry's capture
        efficiency differs per gene (0 = off).
    """

    thinning: float = 1.0
    feature_dropout: float = 0.0
    prot_feature_dropout: float = 0.0
    gene_masking: float = 0.0
    gene_shift: float = 0.0

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return (self.thinning < 1.0 or self.feature_dropout > 0.0 or self.prot_feature_dropout > 0.0
                or self.gene_masking > 0.0 or self.gene_shift > 0.0)


def gather_rows(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, other: torch.Tensor,
                prot: torch.Tensor, idx: torch.Tensor, gene_codes: torch.Tensor | None = None,
                gene_table: torch.Tensor | None = None) -> RawBatch:
    """Rows ``idx`` of a CSR matrix (plus the per-cell ``other`` counts and dense ``prot``) as a raw batch.

    Index operations only (no host round trip besides the size of the output). With ``gene_codes`` (per cell, a
    row of ``gene_table``: the model genes it measured), the batch's ``gene_keep`` is that row when every cell
    shares it (batches drawn within one dataset), else one row per cell.
    """
    starts = indptr[idx]
    lens = indptr[idx + 1] - starts
    n = idx.numel()
    total = int(lens.sum())
    rows = torch.repeat_interleave(torch.arange(n, device=idx.device), lens, output_size=total)
    # position in the CSR arrays = position in the batch + (row start in the CSR - row start in the batch);
    # 1-D index_select, not advanced indexing: several times faster on the CPU
    shift = starts - (torch.cumsum(lens, 0) - lens)
    pos = torch.arange(total, device=idx.device) + torch.repeat_interleave(shift, lens, output_size=total)
    keep = None
    if gene_table is not None and n:
        codes = gene_codes[idx]
        keep = gene_table[codes[0]] if bool((codes == codes[0]).all()) else gene_table[codes]
    return RawBatch(n=n, row=rows, col=indices.index_select(0, pos).long(), val=values.index_select(0, pos),
                    other=other[idx], prot=prot[idx], gene_keep=keep)


def _keep_prob(n: int, low: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Return per-cell keep probabilities ``U(low, 1)``, rounded to multiples of ``2**-15``.

    :func:`thin_counts` draws those exactly, so it and :func:`thin_counts_reference` thin with the same ones.
    """
    return randbits.quantise(low + (1.0 - low) * torch.rand(n, generator=gen, device=device))


EXPAND_MAX = 64  # CPU thinning: integer counts up to this are thinned molecule by molecule, larger ones by binomial


def thin_counts_reference(counts: torch.Tensor, keep: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Binomial thinning with ``torch.binomial`` (the plain reference of :func:`thin_counts`)."""
    counts = counts.float()
    return torch.binomial(counts, keep.float().expand_as(counts).contiguous(), generator=gen)


def thin_counts(counts: torch.Tensor, keep: torch.Tensor, gen: torch.Generator, *,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Binomial thinning: each count ``c`` -> ``Binomial(c, keep)``.

    ``keep`` is broadcast to ``counts``; or, with ``rows`` (the sorted row of each count of a 1-D ``counts``,
    e.g. :class:`RawBatch`'s), it holds one probability per row and count ``i`` takes ``keep[rows[i]]``.

    On the CPU ``torch.binomial`` costs ~100-200 ns a draw, so integer counts up to ``EXPAND_MAX`` (the vast
    majority of RNA counts) are thinned as what they are, a sum of independent ``Bernoulli(keep)`` molecules,
    each one 15-bit uniform integer (:mod:`omicsclip.model.randbits`, ~1 ns a molecule) against ``keep`` rounded
    to a multiple of ``2**-15``; with ``rows`` the molecules' thresholds are laid out a row at a time (a few
    hundred runs, not one per count). The rest (large or non-integer counts) go through ``torch.binomial`` with
    the same rounded probabilities, and every count on other devices through :func:`thin_counts_reference`. For
    keep probabilities that are multiples of ``2**-15`` (training's are: ``_keep_prob``) this is the distribution
    of :func:`thin_counts_reference`, from another random stream.
    """
    counts = counts.float()
    if rows is not None:
        if counts.dim() != 1 or rows.shape != counts.shape:
            raise ValueError("thin_counts: rows needs 1-D counts, one row index per count")
        if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
            raise ValueError("thin_counts: rows must be sorted")
    if counts.device.type != "cpu":
        return thin_counts_reference(counts, keep if rows is None else keep.index_select(0, rows), gen)
    c = counts.reshape(-1)
    q = randbits.quantise(keep)
    small = (c <= EXPAND_MAX) & (c == c.floor())
    n_mol = torch.where(small, c, 0.0).long()
    ends = torch.cumsum(n_mol, 0)
    total = int(ends[-1]) if ends.numel() else 0
    if rows is None:
        q = q.expand_as(counts).reshape(-1)
        runs = n_mol
    else:  # molecules of a row are contiguous: one run of its threshold per row
        runs = torch.zeros(q.numel(), dtype=torch.int64).index_add_(0, rows, n_mol)
    thresholds = torch.repeat_interleave(randbits.below(q), runs, output_size=total)
    hit = randbits.uniform_ints(total, gen) <= thresholds
    kept = torch.zeros(total + 1, dtype=torch.int32)
    torch.cumsum(hit, 0, dtype=torch.int32, out=kept[1:])
    bounds = kept.index_select(0, torch.cat([ends.new_zeros(1), ends]))  # kept molecules before each count
    out = (bounds[1:] - bounds[:-1]).float()  # (a count past EXPAND_MAX has none: 0 until drawn below)
    big = torch.nonzero(~small).squeeze(1)
    if big.numel():
        qb = q.index_select(0, big if rows is None else rows.index_select(0, big))
        out[big] = torch.binomial(c.index_select(0, big), qb, generator=gen)
    return out.reshape(counts.shape)


class _ProjectionPlan:
    """``S @ P.T`` for a sparse ``S`` (cells x genes, CSR parts) and a projection ``P`` (rows x genes).

    Rows of ``P`` that hold a single 1 (indicator rows: one gene's value passed through) take the entries of their
    gene by a scatter; the other rows take a sparse-dense product with those rows only.
    """

    def __init__(self, proj: torch.Tensor) -> None:
        self.proj = proj
        n_rows, n_genes = proj.shape
        nonzero = proj != 0
        gene = proj.abs().argmax(dim=1)
        indicator = (nonzero.sum(dim=1) == 1) & (proj.gather(1, gene[:, None]).squeeze(1) == 1)
        seen: set[int] = set()
        for r in torch.nonzero(indicator).squeeze(1).tolist():  # a gene with two indicator rows: the second is dense
            g = int(gene[r])
            indicator[r] = g not in seen
            seen.add(g)
        slot = torch.full((n_genes,), -1, dtype=torch.int64, device=proj.device)
        self.ind_rows = torch.nonzero(indicator).squeeze(1)
        self.dense_rows = torch.nonzero(~indicator).squeeze(1)
        slot[gene[self.ind_rows]] = torch.arange(self.ind_rows.numel(), device=proj.device)
        self.slot = slot  # gene -> its indicator row's position among the indicator rows (-1: none)
        self.dense_t = proj[self.dense_rows].t().contiguous()  # genes x dense rows
        order = torch.cat([self.dense_rows, self.ind_rows])
        self.inverse = None if torch.equal(order, torch.arange(n_rows, device=proj.device)) else torch.argsort(order)

    def base(self, c: torch.Tensor) -> torch.Tensor:
        """``c @ P.T`` for the zeros' scaled values ``c`` (cached for the last ``c`` seen: they change rarely)."""
        cached = getattr(self, "_base", None)
        if cached is None or (cached[0] is not c and not torch.equal(cached[0], c)):
            cached = self._base = (c, c @ self.proj.t())
        return cached[1]

    def apply(self, row: torch.Tensor, col: torch.Tensor, val: torch.Tensor, n: int) -> torch.Tensor:
        """``S @ P.T`` (n x rows) for ``S`` given by sorted ``row``, ``col``, ``val``."""
        n_genes = self.slot.numel()
        parts = []
        if self.dense_rows.numel():
            crow = torch.searchsorted(row, torch.arange(n + 1, device=row.device, dtype=row.dtype))
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                s = torch.sparse_csr_tensor(crow, col, val, size=(n, n_genes), check_invariants=False)
                parts.append(torch.sparse.mm(s, self.dense_t))
        if self.ind_rows.numel():
            k = self.ind_rows.numel()
            slot = self.slot.index_select(0, col)
            # entries of other genes go to one spare element past the end (no host sync for a selection)
            at = torch.where(slot >= 0, row * k + slot, n * k)
            ind = torch.zeros(n * k + 1, dtype=val.dtype, device=val.device).index_add_(0, at, val)
            parts.append(ind[:-1].reshape(n, k))
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return out if self.inverse is None else out.index_select(1, self.inverse)


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
        self._plan: _ProjectionPlan | None = None

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

    def _projection_plan(self) -> _ProjectionPlan:
        """Return the projection split into dense and indicator rows (cached per ``rna_proj`` tensor)."""
        plan = getattr(self, "_plan", None)
        if plan is None or plan.proj is not self.rna_proj:
            plan = self._plan = _ProjectionPlan(self.rna_proj)
        return plan

    def rna_sparse(self, row: torch.Tensor, col: torch.Tensor, val: torch.Tensor, lib: torch.Tensor, n: int,
                   keep: torch.Tensor | None = None) -> torch.Tensor:
        """Compute :meth:`rna` with a projection from the non-zeros only (``row`` sorted, cells ``0..n-1``).

        ``keep`` is a (genes,) present mask or a (cells, genes) feature-dropout mask.

        Zero counts all map to the same scaled value ``c_g``, so ``x @ P.T = (c * keep) @ P.T + S @ P.T`` where
        ``S`` holds ``x - c`` at the non-zeros: no dense cells x genes work unless ``keep`` (feature dropout) is
        given. Indicator rows of ``P`` (one gene's scaled value, the protein genes) are filled by a scatter of
        their genes' entries of ``S``, not by the sparse product.
        """
        proj = self.rna_proj
        if proj is None:
            raise ValueError("CountTransform.rna_sparse needs a projection (rna_proj)")
        plan = self._projection_plan()
        z = torch.log1p(val.float() * (self.target_sum / lib.float().clamp_min(1.0)).index_select(0, row))
        if self.rna_mean is not None:
            c = (-self.rna_mean / self.rna_std).clamp(-self.max_value, self.max_value)
            mean, std = self.rna_mean.index_select(0, col), self.rna_std.index_select(0, col)
            z = ((z - mean) / std).clamp_(-self.max_value, self.max_value)
            delta = z - c.index_select(0, col)
        else:
            c, delta = None, z
        if keep is not None:  # (genes,) present mask or (cells, genes) dropout mask
            delta = delta * (keep.index_select(0, col) if keep.dim() == 1 else keep[row, col]).to(delta.dtype)
            base = None
            if c is not None and keep.dim() == 1:
                base = ((keep.to(proj.dtype) * c) @ proj.t()).expand(n, -1)
            elif c is not None:  # a block of cells at a time: no float copy of the whole cells x genes mask
                cp = c[:, None] * proj.t()
                base = torch.cat([keep[i : i + 4096].to(proj.dtype) @ cp for i in range(0, n, 4096)])
        else:
            base = plan.base(c).expand(n, -1) if c is not None else None
        out = plan.apply(row, col, delta, n)
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
            Mask of the model proteins present in the input (``None``: all): one mask for every cell
            (proteins,) or one per cell (cells x proteins, e.g. a store pooled from datasets with different
            panels). Absent proteins are left out of the CLR and their inputs set to 0 (the training mean).
        """
        lp = torch.log1p(counts.float())
        if present is None:
            x = lp - lp.mean(dim=1, keepdim=True)
        else:
            m = present.to(lp.dtype)
            x = lp - (lp * m).sum(dim=1, keepdim=True) / m.sum(dim=-1, keepdim=m.dim() > 1).clamp_min(1.0)
        if self.prot_mean is not None:
            x = (x - self.prot_mean) / self.prot_std
        if present is not None:
            x = x * present.to(x.dtype)
        if self.depth is not None:
            total = (counts.float() if present is None else counts.float() * present.to(lp.dtype)).sum(dim=1)
            x = self._with_depth(x, total, self.depth[2], self.depth[3])
        return x


def split_unmeasured(prot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return protein counts with unmeasured entries (NaN) set to 0, and the cells x proteins measured mask.

    NaN marks a protein outside a cell's panel (a store pooled from several panels,
    :mod:`omicsclip.io.panels`); the mask is ``None`` when every entry was measured.
    """
    nan = torch.isnan(prot)
    if not bool(nan.any()):
        return prot, None
    return prot.masked_fill(nan, 0.0), ~nan


def thin_batch(batch: RawBatch, aug: Augmentation | None, gen: torch.Generator | None, *,
               reference: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the batch's counts as float32, thinned if ``aug`` says so: RNA non-zeros, other totals, proteins.

    ``reference`` thins the RNA counts with :func:`thin_counts_reference` (``torch.binomial``) instead of
    :func:`thin_counts`.
    """
    val, other, prot = batch.val.float(), batch.other.float(), batch.prot.float()
    prot, measured = split_unmeasured(prot)
    if aug is not None and aug.thinning < 1.0:
        if gen is None:
            raise ValueError("augmentation needs a generator")
        device = batch.val.device
        q = _keep_prob(batch.n, aug.thinning, gen, device)
        if reference:
            val = thin_counts_reference(val, q.index_select(0, batch.row), gen)
        else:
            val = thin_counts(val, q, gen, rows=batch.row)
        # other-gene totals and protein counts: a few large counts per cell, where torch.binomial is cheaper
        other = thin_counts_reference(other, q, gen)
        qp = _keep_prob(batch.n, aug.thinning, gen, device)
        prot = thin_counts_reference(prot, qp[:, None], gen)
    if measured is not None:
        prot = prot.masked_fill(~measured, float("nan"))
    return val, other, prot


def transform_batch(batch: RawBatch, val: torch.Tensor, other: torch.Tensor, prot: torch.Tensor,
                    transform: CountTransform, aug: Augmentation | None = None, gen: torch.Generator | None = None,
                    *, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature dropout and the count transform of (thinned) counts: the encoders' inputs.

    ``reference`` computes the RNA input from dense cells x genes counts (:meth:`CountTransform.rna`, the plain
    reference) instead of from the non-zeros (:meth:`CountTransform.rna_sparse`, with a projection).
    """
    device = val.device
    random = aug is not None and (aug.gene_shift > 0.0 or aug.feature_dropout > 0.0 or aug.prot_feature_dropout > 0.0
                                  or aug.gene_masking > 0.0)
    if random and gen is None:
        raise ValueError("augmentation needs a generator")
    if random and aug.gene_shift > 0.0:  # one capture-efficiency factor per gene for the whole batch
        z = torch.randn(transform.n_genes, generator=gen, device=device)
        factor = torch.exp(aug.gene_shift * z - aug.gene_shift ** 2 / 2)
        val = val * factor.index_select(0, batch.col)
    lib = torch.zeros(batch.n, device=device).index_add_(0, batch.row, val) + other
    keep_rna = keep_prot = None
    if random:
        if aug.feature_dropout > 0.0:
            keep_rna = torch.rand(batch.n, transform.n_genes, generator=gen, device=device) >= aug.feature_dropout
        if aug.prot_feature_dropout > 0.0:
            keep_prot = torch.rand(prot.shape, generator=gen, device=device) >= aug.prot_feature_dropout
        if aug.gene_masking > 0.0:  # one gene subset for the whole batch: the (genes,) mask's cheap path
            frac = torch.rand(1, generator=gen, device=device) * aug.gene_masking
            keep_genes = torch.rand(transform.n_genes, generator=gen, device=device) >= frac
            keep_rna = keep_genes if keep_rna is None else keep_rna & keep_genes
    if batch.gene_keep is not None:  # genes the cells' dataset never measured: the training mean
        keep_rna = batch.gene_keep if keep_rna is None else keep_rna & batch.gene_keep
    if transform.rna_proj is not None and not reference:
        x_rna = transform.rna_sparse(batch.row, batch.col, val, lib, batch.n, keep_rna)
    else:
        counts = torch.zeros(batch.n, transform.n_genes, device=device)
        counts[batch.row, batch.col] = val
        x_rna = transform.rna(counts, lib, keep_rna)
    prot, measured = split_unmeasured(prot)
    if keep_prot is not None:  # panel masking: a dropped protein is treated as unmeasured (left out of the CLR)
        measured = keep_prot if measured is None else measured & keep_prot
    x_prot = transform.prot(prot, measured)
    return x_rna, x_prot


def model_inputs(batch: RawBatch, transform: CountTransform, aug: Augmentation | None = None,
                 gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (training) and transform a raw batch into the encoders' inputs (float32, on the batch's device).

    Thinning acts on raw counts: the model genes' counts, the per-cell total of the other genes (one binomial
    draw: the sum of independently thinned counts), and the protein counts, so that library sizes stay
    consistent. The gene-wise capture shift scales the thinned model-gene counts before library sizes are taken.
    Feature dropout sets a random fraction of the *transformed* inputs (before a projection) to 0
    (= the training mean, i.e. what a missing gene looks like at inference). Draws from ``gen`` in a fixed order,
    so runs and resumed runs are repeatable.
    """
    val, other, prot = thin_batch(batch, aug, gen)
    return transform_batch(batch, val, other, prot, transform, aug, gen)
