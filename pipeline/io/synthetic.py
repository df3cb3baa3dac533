"""Realistic synthetic CITE-seq data: the demo's and the tests' data (no download needed).

Generative model, per cell ``i`` of type ``k`` and batch ``b``:

* a latent state ``z_i = c_k + e_i`` (``e_i`` ~ N(0, s²)): cell-type centroid plus continuous within-type
  variation that both modalities see, so cross-modal matching is harder than matching types;
* RNA: ``log mu_ig = log p_g + W_g z_i + m_kg + beta_bg``; relative abundances ``p_g`` are heavy-tailed like real
  genes, ``m_kg`` are type marker programs, ``beta`` batch effects; counts are negative binomial (gamma-Poisson,
  per-gene dispersion) around ``lib_i * softmax(log mu_i)`` with log-normal library sizes;
* protein: each antibody is linked to a marker gene and to the latent state, ``log nu_ip = a_p + c_p * x_ig(p) +
  V_p z_i + gamma_bp``; counts are negative binomial plus an ambient (free antibody) Poisson background;
  isotype controls get the ambient background only.

Cells are generated in fixed internal blocks seeded by ``(seed, block)``: any output chunking gives the same data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path
from omicsclip.io.paired import PairedData

log = logging.getLogger(__name__)

_BLOCK = 2048  # cells per internally seeded block (fixed: keeps data independent of chunking)
_LATENT = 10

_MARKERS = [  # (protein, linked gene)
    ("CD3", "CD3E"), ("CD4", "CD4"), ("CD8a", "CD8A"), ("CD14", "CD14"), ("CD16", "FCGR3A"), ("CD19", "CD19"),
    ("CD56", "NCAM1"), ("CD45RA", "PTPRC"), ("CD45RO", "PTPRC-RO"), ("CD127", "IL7R"), ("CD25", "IL2RA"),
    ("PD-1", "PDCD1"), ("TIGIT", "TIGIT"), ("CD11c", "ITGAX"), ("HLA-DR", "HLA-DRA"), ("CD27", "CD27"),
    ("CD28", "CD28"), ("CD38", "CD38"), ("CD69", "CD69"), ("CCR7", "CCR7"), ("CD62L", "SELL"), ("CD2", "CD2"),
    ("CD7", "CD7"), ("CD11b", "ITGAM"), ("CD1c", "CD1C"), ("CD123", "IL3RA"), ("CD141", "THBD"), ("CD57", "B3GAT1"),
    ("CD161", "KLRB1"), ("CD335", "NCR1"),
]
_TYPES = ["CD4 T", "CD14 Mono", "CD8 T", "NK", "B", "CD16 Mono", "DC", "Treg", "pDC", "Plasma", "Platelet", "MAIT"]


@dataclass(frozen=True)
class SynthParams:
    """Global parameters drawn once from the seed."""

    genes: pd.DataFrame
    proteins: pd.DataFrame
    type_names: list[str]
    type_probs: np.ndarray
    centroids: np.ndarray  # types x latent
    log_p: np.ndarray  # genes
    w: np.ndarray  # genes x latent
    markers: np.ndarray  # types x genes (log fold changes)
    theta_rna: np.ndarray  # genes
    batch_rna: np.ndarray  # batches x genes
    prot_gene: np.ndarray  # proteins -> linked gene index (-1 for isotypes)
    prot_a: np.ndarray
    prot_c: np.ndarray
    prot_v: np.ndarray  # proteins x latent
    prot_type: np.ndarray  # types x proteins
    theta_prot: np.ndarray
    batch_prot: np.ndarray  # batches x proteins
    ambient: np.ndarray  # proteins (fraction of protein library)
    n_batches: int


def _params(n_genes: int, n_proteins: int, n_types: int, n_batches: int, n_isotypes: int,
            seed: int) -> SynthParams:
    rng = np.random.default_rng([seed, 0xC17E])
    n_linked = n_proteins
    marker_names = [m for m in _MARKERS][:n_linked]
    prot_names = [p for p, _ in marker_names] + [f"ADT{i:03d}" for i in range(len(marker_names), n_linked)]
    linked_genes = [g for _, g in marker_names] + [f"ADTGENE{i:03d}" for i in range(len(marker_names), n_linked)]
    iso = ["Mouse_IgG1_isotype", "Mouse_IgG2a_isotype", "Mouse_IgG2b_isotype", "Rat_IgG2b_isotype"]
    iso_names = [iso[i % 4] + (f"_{i // 4}" if i >= 4 else "") for i in range(n_isotypes)]
    n_other = n_genes - n_linked
    gene_names = linked_genes[:n_genes] + [f"G{i:05d}" for i in range(max(n_other, 0))]
    gene_names = gene_names[:n_genes]
    n_link_eff = min(n_linked, n_genes)

    type_names = (_TYPES + [f"type_{k}" for k in range(len(_TYPES), n_types)])[:n_types]
    type_probs = 1.0 / np.arange(1, n_types + 1) ** 0.8
    type_probs /= type_probs.sum()

    centroids = rng.normal(0, 1.0, (n_types, _LATENT))
    log_p = rng.normal(0, 1.6, n_genes)
    w = rng.normal(0, 0.45, (n_genes, _LATENT)) * (rng.random((n_genes, _LATENT)) < 0.25)
    markers = np.zeros((n_types, n_genes))
    for k in range(n_types):
        idx = rng.choice(n_genes, size=max(2, n_genes // 40), replace=False)
        markers[k, idx] = rng.uniform(0.7, 1.8, idx.size)
    # each protein's linked gene is a marker of one or two types
    prot_type = np.zeros((n_types, n_proteins))
    for p in range(n_link_eff):
        ks = rng.choice(n_types, size=1 + (rng.random() < 0.4), replace=False)
        markers[ks, p] = rng.uniform(1.5, 3.0, ks.size)
        log_p[p] = rng.normal(-0.5, 0.5)
        prot_type[ks, p] = rng.uniform(1.0, 2.0, ks.size)
    theta_rna = rng.gamma(2.0, 1.0, n_genes) + 0.3
    batch_rna = rng.normal(0, 0.25, (n_batches, n_genes)) if n_batches > 1 else np.zeros((1, n_genes))

    prot_gene = np.array([p if p < n_genes else -1 for p in range(n_proteins)])
    prot_a = rng.normal(3.0, 0.6, n_proteins)
    prot_c = rng.uniform(0.5, 1.0, n_proteins)
    prot_v = rng.normal(0, 0.35, (n_proteins, _LATENT))
    theta_prot = rng.uniform(4.0, 12.0, n_proteins)
    batch_prot = rng.normal(0, 0.2, (n_batches, n_proteins)) if n_batches > 1 else np.zeros((1, n_proteins))
    ambient = rng.uniform(0.002, 0.01, n_proteins + n_isotypes)

    genes = pd.DataFrame({"gene_ids": [f"ENSGSYN{i:07d}" for i in range(n_genes)],
                          "feature_types": "Gene Expression"}, index=pd.Index(gene_names, name=None))
    proteins = pd.DataFrame({"isotype_control": [False] * n_proteins + [True] * n_isotypes},
                            index=pd.Index(prot_names + iso_names))
    return SynthParams(genes, proteins, type_names, type_probs, centroids, log_p, w, markers, theta_rna,
                       batch_rna, prot_gene, prot_a, prot_c, prot_v, prot_type, theta_prot, batch_prot, ambient,
                       n_batches)


def _barcodes(start: int, n: int, batch: np.ndarray) -> list[str]:
    """10x-like unique barcodes: 16 bases encoding the cell index, suffixed with the batch (lane) number."""
    idx = np.arange(start, start + n, dtype=np.int64)
    letters = np.array(list("ACGT"))
    digits = (idx[:, None] // (4 ** np.arange(15, -1, -1))[None, :]) % 4
    seqs = ["".join(row) for row in letters[digits]]
    return [f"{s}-{b + 1}" for s, b in zip(seqs, batch, strict=True)]


def _nb(rng: np.random.Generator, mean: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Negative binomial counts as a gamma-Poisson mixture (mean, inverse dispersion ``theta``)."""
    lam = rng.gamma(shape=theta, scale=mean / theta)
    return rng.poisson(lam)


def _block(par: SynthParams, block: int, n: int, seed: int, rna_depth: float, prot_depth: float):
    rng = np.random.default_rng([seed, block])
    n_types = len(par.type_names)
    types = rng.choice(n_types, size=n, p=par.type_probs)
    batch = rng.integers(0, par.n_batches, size=n)
    z = par.centroids[types] + rng.normal(0, 0.7, (n, _LATENT))

    logit = par.log_p[None, :] + z @ par.w.T + par.markers[types] + par.batch_rna[batch]
    logit -= logit.max(axis=1, keepdims=True)
    frac = np.exp(logit)
    frac /= frac.sum(axis=1, keepdims=True)
    lib = rna_depth * np.exp(rng.normal(0, 0.45, n) + 0.15 * batch)
    rna = _nb(rng, frac * lib[:, None], par.theta_rna[None, :]).astype(np.float32)

    n_prot = par.prot_a.size
    x_link = np.zeros((n, n_prot))
    has = par.prot_gene >= 0
    x_link[:, has] = np.log1p(frac[:, par.prot_gene[has]] * 1e4)
    x_link -= x_link.mean(axis=0, keepdims=True) if n > 1 else 0.0
    log_nu = (par.prot_a[None, :] + par.prot_c[None, :] * x_link + z @ par.prot_v.T
              + par.prot_type[types] + par.batch_prot[batch])
    lib_p = prot_depth * np.exp(rng.normal(0, 0.35, n))
    nu = np.exp(log_nu)
    nu = nu / nu.mean(axis=1, keepdims=True) * (lib_p[:, None] / n_prot)
    specific = _nb(rng, nu, par.theta_prot[None, :])
    ambient = rng.poisson(par.ambient[None, :] * lib_p[:, None])
    prot = ambient.astype(np.float32)
    prot[:, :n_prot] += specific
    obs = pd.DataFrame({"cell_type": pd.Categorical.from_codes(types, categories=par.type_names),
                        "batch": pd.Categorical([f"batch{b + 1}" for b in batch],
                                                categories=[f"batch{b + 1}" for b in range(par.n_batches)])},
                       index=_barcodes(block * _BLOCK, n, batch))
    return sp.csr_matrix(rna), prot, obs


def _check(n_cells: int, n_genes: int, n_proteins: int, n_types: int, n_batches: int, n_isotypes: int) -> None:
    for name, val, lo in (("cells", n_cells, 1), ("genes", n_genes, 2), ("proteins", n_proteins, 1),
                          ("types", n_types, 1), ("batches", n_batches, 1), ("isotypes", n_isotypes, 0)):
        if val < lo:
            raise InputError(f"synthetic data: --{name} must be at least {lo}, got {val}")
    if n_proteins > n_genes:
        raise InputError(f"synthetic data: --proteins ({n_proteins}) cannot exceed --genes ({n_genes})")


def iter_synthetic(n_cells: int, n_genes: int = 1000, n_proteins: int = 20, n_types: int = 6, n_batches: int = 1,
                   n_isotypes: int = 0, seed: int = 0, rna_depth: float = 2500.0, prot_depth: float = 3000.0):
    """Return ``(params, blocks)``: global parameters and an iterator of ``(rna CSR, protein, obs)`` blocks.

    Blocks hold at most 2,048 cells each, so memory stays bounded for any ``n_cells``.
    """
    _check(n_cells, n_genes, n_proteins, n_types, n_batches, n_isotypes)
    par = _params(n_genes, n_proteins, n_types, n_batches, n_isotypes, seed)

    def blocks():
        for block, start in enumerate(range(0, n_cells, _BLOCK)):
            yield _block(par, block, min(_BLOCK, n_cells - start), seed, rna_depth, prot_depth)

    return par, blocks()


def make_synthetic(n_cells: int = 2000, n_genes: int = 1000, n_proteins: int = 20, n_types: int = 6,
                   n_batches: int = 1, n_isotypes: int = 0, seed: int = 0, *, rna_depth: float = 2500.0,
                   prot_depth: float = 3000.0) -> PairedData:
    """Synthetic paired counts in memory.

    Parameters
    ----------
    n_cells, n_genes, n_proteins, n_types, n_batches, n_isotypes
        Sizes; isotype controls are extra antibodies with ambient counts only (``proteins.isotype_control``).
    seed
        Same seed, same data (independent of how the data is later chunked).
    rna_depth, prot_depth
        Median UMIs per cell for RNA and protein.

    Returns
    -------
    PairedData with ``obs["cell_type"]`` and ``obs["batch"]``.
    """
    par, blocks = iter_synthetic(n_cells, n_genes, n_proteins, n_types, n_batches, n_isotypes, seed,
                                 rna_depth, prot_depth)
    rnas, prots, obss = [], [], []
    for rna, prot, obs in blocks:
        rnas.append(rna)
        prots.append(prot)
        obss.append(obs)
    obs = pd.concat(obss)
    for col in ("cell_type", "batch"):
        obs[col] = pd.Categorical(obs[col].astype(str), categories=obss[0][col].cat.categories)
    return PairedData(rna=sp.vstack(rnas, format="csr"), prot=np.vstack(prots), obs=obs, genes=par.genes.copy(),
                      proteins=par.proteins.copy(),
                      uns={"synthetic": {"seed": seed, "n_types": n_types, "n_batches": n_batches}})


def write_synthetic_h5ad(path: str | Path, n_cells: int = 2000, n_genes: int = 1000, n_proteins: int = 20,
                         n_types: int = 6, n_batches: int = 1, n_isotypes: int = 0, seed: int = 0, *,
                         overwrite: bool = False, progress: bool = False) -> Path:
    """Stream synthetic cells to an ``.h5ad`` in the shared-data layout, block by block.

    ``X`` = raw RNA counts (CSR), ``obsm["protein"]`` = raw ADT counts (DataFrame), ``obs["cell_type"]``,
    ``obs["batch"]``, ``uns["protein_names"]``. Memory is bounded by one block of RNA plus the protein matrix.
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem
    from tqdm.auto import tqdm

    path = Path(path)
    obss: list[pd.DataFrame] = []
    prots: list[np.ndarray] = []
    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        par, blocks = iter_synthetic(n_cells, n_genes, n_proteins, n_types, n_batches, n_isotypes, seed)
        bar = tqdm(total=n_cells, unit="cells", desc="synth", disable=not progress)
        for rna, prot, obs in blocks:
            if "X" not in f:
                write_elem(f, "X", rna, dataset_kwargs={"chunks": True})
            else:
                sparse_dataset(f["X"]).append(rna)
            prots.append(prot)
            obss.append(obs)
            bar.update(rna.shape[0])
        bar.close()
        obs = pd.concat(obss)
        for col in ("cell_type", "batch"):
            obs[col] = pd.Categorical(obs[col].astype(str), categories=obss[0][col].cat.categories)
        prot_df = pd.DataFrame(np.vstack(prots), index=obs.index, columns=par.proteins.index)
        write_elem(f, "obs", obs)
        write_elem(f, "var", par.genes)
        write_elem(f, "obsm", {"protein": prot_df})
        for key in ("varm", "obsp", "varp", "layers"):
            write_elem(f, key, {})
        write_elem(f, "uns", {"protein_names": np.array(par.proteins.index, dtype=object),
                              "isotype_controls": np.array(
                                  par.proteins.index[par.proteins["isotype_control"]], dtype=object),
                              "synthetic": {"seed": seed, "n_types": n_types, "n_batches": n_batches,
                                            "generator": "omicsclip"}})
    log.info("wrote %s: %d cells x %d genes, %d proteins", path, n_cells, n_genes, par.proteins.shape[0])
    return path
