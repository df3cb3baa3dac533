"""Preprocessing fitted on training cells only, saved with the model, and applied identically to new cells.

RNA: library-size normalisation (total counts over *all* genes of the input) to ``target_sum``, ``log1p``, the
highly variable genes chosen by scanpy on the training cells, per-gene centring/scaling clipped at
``max_value``. Protein: centred log-ratio per cell (``log1p(x) - mean_p log1p(x_p)``), optional per-protein
centring/scaling.

New cells are matched to the model by feature name (:mod:`omicsclip.model.alignment`). Missing genes/proteins are
filled with zeros *in the model's input space* (= the training mean after scaling) and reported; more than
``max_missing_gene_fraction`` of the model's genes or ``max_missing_protein_fraction`` of its proteins missing is
an error.

The numeric transform is written once, in torch (:class:`omicsclip.model.batchops.CountTransform`, fitted here as
:class:`TorchPreprocessor`), and shared by training batches, validation and embedding, so training and inference
cannot drift apart.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from omicsclip.config import default_config
from omicsclip.errors import InputError
from omicsclip.model.batchops import CountTransform
from omicsclip.model.geneselect import panel_hvg, select_hvg, select_protein_genes

log = logging.getLogger(__name__)



@dataclass
class PreprocessState:
    """Everything needed to transform raw counts exactly as during training (JSON-serialisable).

    Attributes
    ----------
    genes
        Model input genes (the highly variable genes), in model order.
    all_genes
        All genes of the training store, in store order (lets inputs without gene names be recognised).
    proteins
        Model input proteins, in model order.
    target_sum, max_value, max_missing_gene_fraction, max_missing_protein_fraction
        As fitted (the ``preprocess`` config section of the training run). A ``model.json`` written before
        ``max_missing_protein_fraction`` existed gets the value of configs/default.yaml, with a warning
        (:meth:`from_dict`).
    rna_mean, rna_std
        Per model gene, of the log-normalised training values; ``None`` when RNA is not scaled.
    rna_pcs
        Principal axes (components x model genes) of the scaled training values that the RNA input is projected
        on; ``None``: the encoder sees the genes.
    protein_genes
        Model genes passed to the RNA encoder as their own scaled values beside the principal axes (with
        ``rna_pcs`` only): per protein, the genes most correlated with it on the training cells
        (:func:`select_protein_genes`). ``None`` or empty: none.
    depth
        ``[rna mean, rna std, protein mean, protein std]`` of ``log1p`` total counts per training cell: each
        encoder also sees its cell's standardised log total (depth / cell size); ``None``: not used.
    prot_mean, prot_std
        Per protein, of the CLR-transformed training values; ``None`` when proteins are not scaled.
    library_genes
        The genes library sizes are counted over (``preprocess.genes``: e.g. the genes shared with the datasets to
        be queried), so that a reference and a query cut to them normalise alike; ``None``: all input genes.
    panels
        The antibody panels of the training datasets (a store pooled from several panels; model proteins are their
        union); ``None``: one panel, the model's proteins. A query's protein input is held to
        ``max_missing_protein_fraction`` against the training panel it covers best.
    gene_panels
        The model genes each training dataset measured (a store pooled on the union of several datasets' genes),
        when some dataset lacks some model genes; ``None``: every training cell measured every model gene. A
        query's RNA input is held to ``max_missing_gene_fraction`` against the dataset it covers best, and is
        presented as that dataset's cells were in training (:func:`omicsclip.model.alignment.align_rna`).
    library_panels
        With ``gene_panels``: the genes each training dataset measured among those library sizes count
        (``library_genes``, else all), so that a query presented as one dataset's cells counts its library over
        that dataset's genes; ``None`` for models saved before it (the query's library then counts all its genes).
    datasets
        The training datasets' names, in the order of ``panels`` and ``gene_panels`` (a pooled store's
        ``dataset`` values, sorted), for messages; ``None``: one dataset, or a model saved before it.
    """

    genes: list[str]
    all_genes: list[str]
    proteins: list[str]
    target_sum: float
    max_value: float
    max_missing_gene_fraction: float
    max_missing_protein_fraction: float
    rna_mean: np.ndarray | None = None
    rna_std: np.ndarray | None = None
    prot_mean: np.ndarray | None = None
    prot_std: np.ndarray | None = None
    rna_pcs: np.ndarray | None = None
    depth: list[float] | None = None
    protein_genes: list[str] | None = None
    library_genes: list[str] | None = None
    panels: list[list[str]] | None = None
    gene_panels: list[list[str]] | None = None
    library_panels: list[list[str]] | None = None
    datasets: list[str] | None = None

    @property
    def rna_projection(self) -> np.ndarray | None:
        """The matrix the scaled model genes are projected on (rows x model genes).

        The principal axes, then one indicator row per protein gene (that gene's scaled value); ``None``
        without principal axes.
        """
        if self.rna_pcs is None:
            return None
        pos = pd.Index(self.genes).get_indexer(self.protein_genes or [])
        if (pos < 0).any():
            raise InputError("preprocessing state: protein_genes are not all model genes")
        rows = np.zeros((len(pos), len(self.genes)), np.float32)
        rows[np.arange(len(pos)), pos] = 1.0
        return np.concatenate([np.asarray(self.rna_pcs, np.float32), rows])

    def to_dict(self) -> dict[str, Any]:
        """Return the state as a JSON-serialisable dict (arrays as lists)."""

        def arr(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(x) for x in a]

        return {
            "genes": list(self.genes), "all_genes": list(self.all_genes), "proteins": list(self.proteins),
            "target_sum": float(self.target_sum), "max_value": float(self.max_value),
            "rna_mean": arr(self.rna_mean), "rna_std": arr(self.rna_std),
            "prot_mean": arr(self.prot_mean), "prot_std": arr(self.prot_std),
            "max_missing_gene_fraction": float(self.max_missing_gene_fraction),
            "max_missing_protein_fraction": float(self.max_missing_protein_fraction),
            "rna_pcs": None if self.rna_pcs is None else [[float(x) for x in row] for row in self.rna_pcs],
            "depth": None if self.depth is None else [float(x) for x in self.depth],
            "protein_genes": None if self.protein_genes is None else [str(g) for g in self.protein_genes],
            "library_genes": None if self.library_genes is None else [str(g) for g in self.library_genes],
            "panels": None if self.panels is None else [[str(p) for p in panel] for panel in self.panels],
            "gene_panels": None if self.gene_panels is None else [[str(g) for g in p] for p in self.gene_panels],
            "library_panels": None if self.library_panels is None else [[str(g) for g in p] for p in self.library_panels],
            "datasets": None if self.datasets is None else [str(d) for d in self.datasets],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessState:
        """Inverse of :meth:`to_dict`.

        A state without ``max_missing_protein_fraction`` (a model trained before the key existed) takes the value
        of configs/default.yaml's ``preprocess`` section and says so in a warning: such a model is held to the
        same protein limit as a newly trained one with the default config.
        """

        def arr(a: list[float] | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a, dtype=np.float32)

        try:
            return cls(
                genes=[str(g) for g in d["genes"]], all_genes=[str(g) for g in d["all_genes"]],
                proteins=[str(p) for p in d["proteins"]], target_sum=float(d["target_sum"]),
                max_value=float(d["max_value"]), rna_mean=arr(d["rna_mean"]), rna_std=arr(d["rna_std"]),
                prot_mean=arr(d["prot_mean"]), prot_std=arr(d["prot_std"]),
                max_missing_gene_fraction=float(d["max_missing_gene_fraction"]),
                max_missing_protein_fraction=float(_protein_limit(d)),
                rna_pcs=None if d.get("rna_pcs") is None else np.asarray(d["rna_pcs"], dtype=np.float32),
                depth=None if d.get("depth") is None else [float(x) for x in d["depth"]],
                protein_genes=None if d.get("protein_genes") is None else [str(g) for g in d["protein_genes"]],
                library_genes=None if d.get("library_genes") is None else [str(g) for g in d["library_genes"]],
                panels=None if d.get("panels") is None else [[str(p) for p in panel] for panel in d["panels"]],
                gene_panels=None if d.get("gene_panels") is None else [[str(g) for g in p] for p in d["gene_panels"]],
                library_panels=None if d.get("library_panels") is None else [[str(g) for g in p]
                                                                              for p in d["library_panels"]],
                datasets=None if d.get("datasets") is None else [str(x) for x in d["datasets"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"preprocessing state: missing or invalid field ({exc})") from None


def _protein_limit(d: dict[str, Any]) -> Any:
    """``max_missing_protein_fraction`` of a state dict; configs/default.yaml's for states written before it."""
    if "max_missing_protein_fraction" in d:
        return d["max_missing_protein_fraction"]
    limit = default_config()["preprocess"]["max_missing_protein_fraction"]
    log.warning("preprocessing state has no max_missing_protein_fraction (a model trained before the setting "
                "existed): using the default %g of configs/default.yaml", limit)
    return limit


# ---------------------------------------------------------------------------------------------------- fitting


def library_size(rna: sp.spmatrix | np.ndarray) -> np.ndarray:
    """Total counts per cell (float64)."""
    return np.asarray(rna.sum(axis=1), dtype=np.float64).ravel()


def log_normalize(rna: sp.csr_matrix, target_sum: float, lib: np.ndarray | None = None, *,
                  chunk_cells: int = 4096) -> sp.csr_matrix:
    """``log1p(counts / lib * target_sum)`` as a new CSR float32 matrix (same non-zero pattern as ``rna``).

    Computed in float64 a block of ``chunk_cells`` rows at a time, so the only full-size allocation is the
    float32 output.
    """
    rna = sp.csr_matrix(rna)
    lib = library_size(rna) if lib is None else lib
    scale = target_sum / np.where(lib > 0, lib, 1.0)
    indptr = rna.indptr
    data = np.empty(rna.nnz, dtype=np.float32)
    for r0 in range(0, rna.shape[0], chunk_cells):
        r1 = min(r0 + chunk_cells, rna.shape[0])
        lo, hi = indptr[r0], indptr[r1]
        vals = rna.data[lo:hi].astype(np.float64) * np.repeat(scale[r0:r1], np.diff(indptr[r0 : r1 + 1]))
        data[lo:hi] = np.log1p(vals, out=vals)
    return sp.csr_matrix((data, rna.indices.copy(), indptr.copy()), shape=rna.shape)


def clr(prot: np.ndarray) -> np.ndarray:
    """Per-cell centred log-ratio: ``log1p(x) - mean over proteins of log1p(x)`` (numpy reference).

    NaN entries (proteins outside a cell's panel) are left out of the cell's mean and stay NaN.
    """
    lp = np.log1p(np.asarray(prot, dtype=np.float64))
    if np.isnan(lp).any():
        with warnings.catch_warnings():  # a cell without any measured protein: all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return (lp - np.nanmean(lp, axis=1, keepdims=True)).astype(np.float32)
    return (lp - lp.mean(axis=1, keepdims=True)).astype(np.float32)


def _mean_std(x: np.ndarray | sp.spmatrix, n_measured: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std; NaN (dense) or, for sparse ``x``, cells beyond ``n_measured[j]`` are left out.

    ``n_measured``: per column, how many cells measured it (a store pooled on the union of several datasets'
    genes: the others hold 0, which adds nothing to the sums).
    """
    if sp.issparse(x):
        n = np.maximum(n_measured, 1) if n_measured is not None else x.shape[0]
        mean = np.asarray(x.sum(axis=0), dtype=np.float64).ravel() / n
        sq = np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel() / n
    else:
        x = np.asarray(x, dtype=np.float64)
        with warnings.catch_warnings():  # NaN = unmeasured (pooled panels); a column never measured: mean 0
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, sq = np.nanmean(x, axis=0), np.nanmean(x * x, axis=0)
        mean, sq = np.nan_to_num(mean), np.nan_to_num(sq)
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    std[std < 1e-8] = 1.0  # constant features: centre only
    return mean.astype(np.float32), std.astype(np.float32)


def principal_axes(x: np.ndarray, n: int, *, max_cells: int = 50_000, seed: int = 0) -> np.ndarray:
    """Top ``n`` principal axes (rows, unit norm, sign-fixed) of the cells x features matrix ``x``.

    Randomized SVD with a fixed seed (exact SVD for tiny matrices); at most ``max_cells`` cells (a seeded subset)
    are used.
    """
    x = np.asarray(x)
    subset = x.shape[0] > max_cells
    if subset:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], max_cells, replace=False))]
    x = x.astype(np.float32, copy=not subset)  # one private copy: it is centred in place
    x -= x.mean(axis=0, dtype=np.float64).astype(np.float32)
    k = min(n, *x.shape)
    if min(x.shape) <= 500:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        top = vt[:k]
    else:
        from sklearn.utils.extmath import randomized_svd

        _, _, top = randomized_svd(x, k, n_iter=5, random_state=seed)
    top = top * np.sign(top[np.arange(k), np.abs(top).argmax(axis=1)])[:, None]
    return top.astype(np.float32)


def fit_preprocessing(
    rna: sp.spmatrix,
    prot: np.ndarray,
    genes: Sequence[str],
    proteins: Sequence[str],
    *,
    n_hvg: int,
    target_sum: float,
    scale_rna: bool,
    max_value: float,
    scale_prot: bool,
    max_missing_gene_fraction: float,
    max_missing_protein_fraction: float,
    n_pcs: int,
    depth_features: bool,
    protein_genes: int,
    pca_within_datasets: bool,
    library_genes: Sequence[str] | None = None,
    panels: Sequence[Sequence[str]] | None = None,
    gene_masks: tuple[np.ndarray, np.ndarray] | None = None,
    dataset_codes: np.ndarray | None = None,
    datasets: Sequence[str] | None = None,
) -> PreprocessState:
    """Fit the preprocessing on the *training* cells' raw counts.

    Parameters
    ----------
    rna
        Training cells x all genes, raw counts.
    prot
        Training cells x proteins, raw counts; NaN where a cell's panel lacked the protein (a pooled store).
    genes, proteins
        Feature names (columns of ``rna`` / ``prot``).
    n_hvg, target_sum, scale_rna, max_value, scale_prot, max_missing_gene_fraction, max_missing_protein_fraction, n_pcs, depth_features, protein_genes
        The ``preprocess`` config section, one argument per key:
        ``n_pcs > 0``: the RNA input is projected on this many principal axes of the scaled training values;
        ``depth_features``: each encoder also sees its cell's standardised log total counts;
        ``protein_genes > 0`` with ``n_pcs``: per protein, the genes most correlated with it join the RNA input
        as their scaled values (:func:`select_protein_genes`).
    library_genes
        Restrict the model to these genes (``preprocess.genes``; they must be among ``genes``): highly variable
        genes are chosen among them and library sizes count only them. ``None``: all genes.
    panels
        The training datasets' protein panels, when they differ (:attr:`PreprocessState.panels`).
    gene_masks
        ``(codes, table)`` when the training datasets measured different genes (a store pooled on their union,
        :func:`omicsclip.io.panels.gene_masks` over ``genes``): per training cell a row of ``table`` (datasets x
        ``genes``, True = measured). Highly variable genes are then chosen per dataset among its own genes (their
        union is the model's), means and scales count the cells that measured each gene, and an unmeasured gene
        is 0 (the mean) in the principal axes' fit.
    dataset_codes, pca_within_datasets
        Per training cell its dataset (codes 0..n-1) in a store pooled from several datasets; with
        ``pca_within_datasets`` the principal axes and the protein genes are fitted on each dataset's values centred
        on that dataset's means, so no axis is spent on what tells the datasets apart (:func:`_centre_groups`).
    datasets
        The training datasets' names, in the order of ``panels`` and ``gene_masks``' table rows (for messages).

    Returns
    -------
    PreprocessState
        The fitted state (saved with the model).
    """
    rna = sp.csr_matrix(rna, dtype=np.float32)
    prot = np.asarray(prot, dtype=np.float32)
    if rna.shape[0] == 0:
        raise InputError("preprocess: no training cells")
    if rna.shape[1] != len(genes) or prot.shape[1] != len(proteins):
        raise InputError("preprocess: feature names do not match the count matrices' columns")
    cols = None
    if library_genes is not None:
        cols = pd.Index([str(g) for g in genes]).get_indexer([str(g) for g in library_genes])
        if (cols < 0).any() or len(cols) == 0:
            raise InputError("preprocess.genes: " + ("empty gene list" if len(cols) == 0 else
                             f"{int((cols < 0).sum())} genes are not in the training store"))
        cols = np.sort(cols)
        rna = rna[:, cols]
    codes, table = (None, None) if gene_masks is None else gene_masks
    if table is not None and cols is not None:
        table = table[:, cols]
    lib = library_size(rna)
    lognorm = log_normalize(rna, target_sum, lib)
    hvg = select_hvg(lognorm, n_hvg) if table is None else panel_hvg(lognorm, n_hvg, codes, table, datasets)
    if cols is not None:
        hvg = cols[hvg]  # positions among all the store's genes
    log.info("preprocess: %d of %d genes selected (n_hvg=%d%s)", hvg.size, len(genes), n_hvg,
             "" if cols is None else f", among the {cols.size} genes of preprocess.genes")
    local = hvg if cols is None else np.searchsorted(cols, hvg)
    lognorm = lognorm[:, local]  # the model genes only from here on
    measured = None if table is None else table[:, local]  # datasets x model genes
    if measured is not None and measured.all():
        measured = None
    rna_mean = rna_std = prot_mean = prot_std = None
    if scale_rna:
        n_measured = None if measured is None else (measured.astype(np.int64).T @ np.bincount(
            codes, minlength=measured.shape[0]))
        rna_mean, rna_std = _mean_std(lognorm, n_measured)
    prot_clr = clr(prot)
    if scale_prot:
        prot_mean, prot_std = _mean_std(prot_clr)
    rna_pcs, prot_genes = None, None
    if n_pcs:
        x = lognorm.toarray()
        if scale_rna:  # in place: one dense copy of the training cells, not three
            x -= rna_mean
            x /= rna_std
            np.clip(x, -max_value, max_value, out=x)
        if measured is not None:  # a gene a cell's dataset did not measure: the mean, as for a query lacking it
            for i in range(measured.shape[0]):
                x[np.ix_(codes == i, ~measured[i])] = 0.0
        if pca_within_datasets and dataset_codes is not None:  # with gene panels, their codes are the datasets
            _centre_groups(x, dataset_codes if measured is None else codes, measured)
        rna_pcs = principal_axes(x, n_pcs)
        if protein_genes:
            picked = select_protein_genes(x, prot_clr, protein_genes)
            prot_genes = [str(genes[hvg[i]]) for i in picked]
            log.info("preprocess: %d protein genes beside %d PCs%s", len(prot_genes), rna_pcs.shape[0],
                     f" (e.g. {', '.join(prot_genes[:5])})" if prot_genes else ": no gene correlates with a protein")
    depth = None
    if depth_features:
        lr, lp = np.log1p(lib), np.log1p(np.nansum(prot, axis=1, dtype=np.float64))
        depth = [float(lr.mean()), float(max(lr.std(), 1e-6)), float(lp.mean()), float(max(lp.std(), 1e-6))]
    all_genes = [str(g) for g in genes]
    return PreprocessState(
        genes=[all_genes[i] for i in hvg], all_genes=all_genes, proteins=[str(p) for p in proteins],
        target_sum=float(target_sum), max_value=float(max_value), rna_mean=rna_mean, rna_std=rna_std,
        prot_mean=prot_mean, prot_std=prot_std, max_missing_gene_fraction=float(max_missing_gene_fraction),
        max_missing_protein_fraction=float(max_missing_protein_fraction), rna_pcs=rna_pcs, depth=depth,
        protein_genes=prot_genes, library_genes=None if cols is None else [all_genes[i] for i in cols],
        panels=None if panels is None else [[str(p) for p in panel] for panel in panels],
        gene_panels=None if measured is None else [[all_genes[g] for g in hvg[m]] for m in measured],
        library_panels=None if measured is None else [
            [all_genes[g] for g in (np.flatnonzero(row) if cols is None else cols[row])] for row in table],
        datasets=None if datasets is None else [str(d) for d in datasets],
    )


def _centre_groups(x: np.ndarray, groups: np.ndarray, measured: np.ndarray | None, *, chunk: int = 4096) -> None:
    """Subtract, in place, each group's (dataset's) column means from its rows of ``x``.

    ``measured`` (groups x columns, True = measured), when given: a column is centred only in the rows of the groups
    that measured it (the others stay 0, the value of an unmeasured gene). Rows are read ``chunk`` at a time (no
    copy of a whole group).
    """
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        total = np.zeros(x.shape[1], np.float64)
        for start in range(0, rows.size, chunk):
            total += x[rows[start:start + chunk]].sum(axis=0, dtype=np.float64)
        mean = (total / rows.size).astype(x.dtype)
        if measured is not None:
            mean[~measured[g]] = 0.0
        for start in range(0, rows.size, chunk):
            x[rows[start:start + chunk]] -= mean


# ---------------------------------------------------------------------------------------------------- transform


class TorchPreprocessor(CountTransform):
    """The fitted transform of a :class:`PreprocessState` as torch operations on one device.

    Parameters
    ----------
    state
        The fitted preprocessing.
    device
        Where the transform's tensors live and the inputs are transformed.
    """

    def __init__(self, state: PreprocessState, device: torch.device | str = "cpu") -> None:
        self.state = state
        self.device = torch.device(device)

        def t(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.as_tensor(np.asarray(a, np.float32), device=self.device)

        super().__init__(n_genes=len(state.genes), target_sum=state.target_sum, max_value=state.max_value,
                         rna_mean=t(state.rna_mean), rna_std=t(state.rna_std), prot_mean=t(state.prot_mean),
                         prot_std=t(state.prot_std), rna_proj=t(state.rna_projection), n_proteins=len(state.proteins),
                         depth=None if state.depth is None else tuple(state.depth))
