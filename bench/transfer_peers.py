"""Pair preparation and the reference-only baselines of bench/transfer.py.

A pair is (reference, query): the reference is paired RNA + protein (+ labels), the query is used as RNA only by
every method; its protein and labels are kept aside as the truth. Genes are the intersection of both gene sets
(gene names that are duplicated within either dataset are dropped from both), in the reference's order.

Baselines, fitted on the reference only and applied to the query's RNA (nothing is tuned on query cells):
normalise (library size 1e4 over the shared genes, log1p), up to 2000 HVGs (scanpy ``seurat`` flavour on the
reference), scale with the reference's mean/sd (clipped at 10), PCA with 50 components fitted on the reference
(the query projected with the same loadings); then

* ``ridge``: ridge regression PCs -> reference protein CLR (alpha by leave-one-out CV on the reference);
* ``knn``: kNN regression on PCs (k by 5-fold CV on the reference), same target;
* labels: ``logreg`` (logistic regression on standardised PCs, C by 5-fold CV on the reference) and ``knn`` (kNN classifier
  on PCs, k by 5-fold CV on the reference), trained on every labelled reference cell (``unknown`` excluded);
* OOD: ``knn`` score = minus the mean distance to the 15 nearest reference cells in PC space.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from transfer_metrics import (
    UNKNOWN,
    clr_counts,
    fit_knn_classifier,
    known_labels,
    label_accuracy,
    ood_eval,
    protein_pearson,
)

from omicsclip.io.gene_names import strip_genome_prefix
from omicsclip.io.protein_names import harmonise_protein_names

N_PCS = 50
N_HVG = 2000
OOD_K = 15


def shared_proteins(ref_names: Sequence[str], query_names: Sequence[str]) -> list[str]:
    """Return the proteins both panels measured, in the reference's order.

    Names are compared as given: :func:`load_dataset` has already harmonised both panels
    (:func:`omicsclip.io.protein_names.harmonise_protein_names`, e.g. CD8 / CD8a, PD-1 / CD279).
    """
    q = set(map(str, query_names))
    return [str(p) for p in ref_names if str(p) in q]


def shared_genes(ref_genes: Sequence[str], query_genes: Sequence[str]) -> list[str]:
    """Return the genes of both datasets, in the reference's order (names duplicated in either are dropped)."""
    ref = pd.Index(map(str, ref_genes))
    qry = pd.Index(map(str, query_genes))
    ref = ref[~ref.duplicated(keep=False)]
    qry = set(qry[~qry.duplicated(keep=False)])
    return [g for g in ref if g in qry]


def labels_of(adata) -> np.ndarray | None:
    """Return ``obs["cell_type"]`` as strings (``None`` for an unlabelled dataset)."""
    if "cell_type" not in adata.obs:
        return None
    return adata.obs["cell_type"].astype(object).where(adata.obs["cell_type"].notna(), UNKNOWN).astype(str).values


def shared_labels(ref_labels: np.ndarray | None, query_labels: np.ndarray | None) -> list[str]:
    """Return the cell types present in both (``unknown`` excluded), sorted; empty when either is unlabelled."""
    if ref_labels is None or query_labels is None:
        return []
    both = set(np.asarray(ref_labels)[known_labels(ref_labels)]) & set(np.asarray(query_labels))
    return sorted(both - {UNKNOWN})


@dataclass
class Pair:
    """One (reference, query) pair on shared genes; the query's protein and labels are the truth only."""

    name: str
    ref_name: str
    query_name: str
    genes: list[str]
    ref_rna: sp.csr_matrix  # reference cells x shared genes, raw counts
    ref_protein: pd.DataFrame  # reference cells x the reference's whole panel, raw counts
    ref_labels: np.ndarray | None
    query_rna: sp.csr_matrix  # query cells x shared genes, raw counts (the only query input of any method)
    query_protein: pd.DataFrame  # truth: query cells x shared proteins, raw counts
    query_labels: np.ndarray | None  # truth
    proteins: list[str]  # shared proteins
    labels: list[str]  # shared labels

    def summary(self) -> dict:
        """Return the sizes of the pair (for the report)."""
        return {"reference": self.ref_name, "query": self.query_name, "n_ref": int(self.ref_rna.shape[0]),
                "n_query": int(self.query_rna.shape[0]), "n_genes": len(self.genes),
                "ref_panel": [str(p) for p in self.ref_protein.columns], "shared_proteins": self.proteins,
                "shared_labels": self.labels}


def load_dataset(path: str | Path):
    """Read an ``.h5ad`` in the shared-data layout (``X`` counts, ``obsm["protein"]`` DataFrame)."""
    import warnings

    import anndata as ad

    with warnings.catch_warnings():  # duplicated gene names are handled (dropped) by shared_genes
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        a = ad.read_h5ad(path)
    a.var_names = strip_genome_prefix(a.var_names)[0]  # hg19_CD3E -> CD3E, as `omicsclip ingest` reads it
    prot = a.obsm["protein"]
    if not isinstance(prot, pd.DataFrame):
        names = a.uns.get("protein_names")
        prot = pd.DataFrame(np.asarray(prot), index=a.obs_names,
                            columns=[str(n) for n in names] if names is not None else None)
    prot = prot.astype(np.float32)
    # protein names harmonised the way `omicsclip ingest` does (CD numbers, TotalSeq suffixes, ...), so every
    # method shares the same proteins and omicsclip's outputs (canonical names) line up with the truth
    prot.columns = harmonise_protein_names([str(c) for c in prot.columns])[0]
    a.obsm["protein"] = prot
    return a


def _columns(x, names: Sequence[str], idx: Sequence[str]) -> sp.csr_matrix:
    pos = pd.Index(map(str, names))
    first = ~pos.duplicated(keep="first")
    lookup = pd.Series(np.arange(len(pos))[first], index=pos[first])
    return sp.csr_matrix(x)[:, lookup.loc[list(idx)].to_numpy()].astype(np.float32)


def prepare_pair(ref, query, ref_name: str = "reference", query_name: str = "query",
                 remove_type: str | None = None) -> Pair:
    """Build a :class:`Pair` from two AnnData objects in the shared-data layout.

    ``remove_type`` drops that cell type, and the unlabelled (``unknown``) cells, from the reference (the OOD
    setting: the removed type's query cells should score low).
    """
    genes = shared_genes(ref.var_names, query.var_names)
    if not genes:
        raise ValueError(f"{ref_name} and {query_name} share no genes")
    ref_prot = ref.obsm["protein"]
    proteins = shared_proteins(ref_prot.columns, query.obsm["protein"].columns)
    if not proteins:
        raise ValueError(f"{ref_name} and {query_name} share no proteins")
    ref_labels, query_labels = labels_of(ref), labels_of(query)
    keep = np.ones(ref.n_obs, dtype=bool)
    if remove_type is not None:
        if ref_labels is None:
            raise ValueError(f"{ref_name} has no labels; cannot remove {remove_type!r}")
        # the reference's "unknown" cells go too: they include cells of every type (pbmc10k's 861 hold ~30 B-,
        # ~120 NK- and ~280 monocyte-like cells by their markers), which would put the removed type back
        keep = (ref_labels != remove_type) & (ref_labels != UNKNOWN)
    return Pair(
        name=f"{ref_name}->{query_name}", ref_name=ref_name, query_name=query_name, genes=genes,
        ref_rna=_columns(ref.X, ref.var_names, genes)[keep],
        ref_protein=pd.DataFrame(np.asarray(ref_prot, dtype=np.float32)[keep], columns=list(map(str, ref_prot.columns)),
                                 index=ref.obs_names[keep]),
        ref_labels=None if ref_labels is None else ref_labels[keep],
        query_rna=_columns(query.X, query.var_names, genes),
        query_protein=pd.DataFrame(np.asarray(query.obsm["protein"][proteins], dtype=np.float32),
                                   columns=proteins, index=query.obs_names),
        query_labels=query_labels, proteins=proteins,
        labels=shared_labels(None if ref_labels is None else ref_labels[keep], query_labels),
    )


# --- baselines -------------------------------------------------------------------------------------------


def lognorm(counts: sp.csr_matrix, target: float = 1e4) -> sp.csr_matrix:
    """Return library-size normalised (to ``target``) ``log1p`` counts."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    lib = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(target, lib, out=np.zeros_like(lib), where=lib > 0)
    return sp.csr_matrix(sp.diags(scale) @ counts).log1p()


def hvg_mask(ref_log: sp.csr_matrix, n_top: int = N_HVG) -> np.ndarray:
    """Return the HVG mask chosen on the reference only (all genes when there are at most ``n_top``)."""
    n = ref_log.shape[1]
    if n <= n_top:
        return np.ones(n, dtype=bool)
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(ref_log.astype(np.float32))
    sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat")
    return a.var["highly_variable"].to_numpy()


class PcaSpace:
    """Log-normalise, HVG-select, scale and PCA, all fitted on the reference; query cells projected."""

    def __init__(self, ref_counts: sp.csr_matrix, seed: int, n_pcs: int = N_PCS, n_hvg: int = N_HVG):
        from sklearn.decomposition import PCA

        x = lognorm(ref_counts)
        self.hvg = hvg_mask(x, n_hvg)
        x = x[:, self.hvg].toarray()
        self.mean = x.mean(axis=0)
        sd = x.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        n_comp = min(n_pcs, x.shape[0] - 1, x.shape[1])
        self.pca = PCA(n_comp, random_state=seed, svd_solver="arpack" if n_comp < min(x.shape) else "full")
        self.ref = self.pca.fit_transform(self._scale(x))

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) / self.sd, -10, 10)

    def transform(self, counts: sp.csr_matrix) -> np.ndarray:
        """Project cells (raw counts on the same genes) with the reference's loadings."""
        return self.pca.transform(self._scale(lognorm(counts)[:, self.hvg].toarray()))


def fit_ridge(x: np.ndarray, y: np.ndarray):
    """Return ridge regression with alpha chosen by (efficient) leave-one-out CV on the reference."""
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(x, y)


def fit_knn_regressor(x: np.ndarray, y: np.ndarray, seed: int, ks: Sequence[int] = (5, 10, 15, 30, 50)):
    """Return kNN regression with k chosen by 5-fold CV (MSE) on the reference."""
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KNeighborsRegressor

    ks = [k for k in ks if k < len(x) * 0.8] or [1]
    grid = GridSearchCV(KNeighborsRegressor(), {"n_neighbors": ks}, cv=KFold(5, shuffle=True, random_state=seed),
                        scoring="neg_mean_squared_error", n_jobs=1)
    return grid.fit(x, y).best_estimator_


def fit_logreg(x: np.ndarray, y: Sequence[str], seed: int, cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0)):
    """Return logistic regression on standardised PCs, C chosen by 5-fold CV (accuracy) on the reference."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    y = np.asarray(y, dtype=str)
    folds = max(2, min(5, int(np.unique(y, return_counts=True)[1].min())))
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    grid = GridSearchCV(model, {"logisticregression__C": list(cs)},
                        cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1)
    return grid.fit(x, y).best_estimator_


def knn_ood_score(ref_pcs: np.ndarray, query_pcs: np.ndarray, k: int = OOD_K) -> np.ndarray:
    """Return minus the mean distance of each query cell to its ``k`` nearest reference cells (high = in-ref)."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(k, len(ref_pcs))).fit(ref_pcs)
    return -nn.kneighbors(query_pcs)[0].mean(axis=1)


def run_baselines(pair: Pair, seed: int = 0, predictions: dict | None = None) -> dict:
    """Fit every baseline on the reference of ``pair`` and score it on the query; return ``{method: result}``.

    ``predictions``, if given, receives each protein baseline's prediction (query cells x shared proteins).
    """
    t0 = time.perf_counter()
    space = PcaSpace(pair.ref_rna, seed)
    q = space.transform(pair.query_rna)
    target = clr_counts(pair.ref_protein.to_numpy())  # CLR over the reference's whole panel
    cols = [list(pair.ref_protein.columns).index(p) for p in pair.proteins]
    pca_s = time.perf_counter() - t0
    out: dict[str, dict] = {}
    for method, fit in (("ridge", lambda: fit_ridge(space.ref, target)),
                        ("knn", lambda: fit_knn_regressor(space.ref, target, seed))):
        t = time.perf_counter()
        model = fit()
        pred = model.predict(q)[:, cols]  # re-centred over the shared proteins inside protein_pearson
        if predictions is not None:
            predictions[method] = pred
        res = {"protein": protein_pearson(pred, pair.query_protein.to_numpy(), pair.proteins)}
        res["protein"]["params"] = {k: float(v) for k, v in (("alpha", getattr(model, "alpha_", None)),
                                                               ("k", getattr(model, "n_neighbors", None)))
                                    if v is not None}
        res["seconds"] = pca_s + time.perf_counter() - t
        out[method] = res
    labelled = pair.ref_labels is not None and pair.query_labels is not None and pair.labels
    if labelled:
        keep = known_labels(pair.ref_labels)
        for method, fit in (("logreg", lambda: fit_logreg(space.ref[keep], pair.ref_labels[keep], seed)),
                            ("knn", lambda: fit_knn_classifier(space.ref[keep], pair.ref_labels[keep], seed))):
            t = time.perf_counter()
            model = fit()
            lab = label_accuracy(model.predict(q), pair.query_labels, pair.labels)
            lab["params"] = {"C": float(model[-1].C)} if method == "logreg" else {"k": int(model.n_neighbors)}
            out.setdefault(method, {})["labels"] = lab
            out[method]["label_seconds"] = time.perf_counter() - t
    return out


def run_ood_baseline(pair_removed: Pair, removed_type: str, seed: int = 0) -> dict:
    """Return the kNN-distance OOD AUROC of ``removed_type`` with the reference lacking it (PCA refitted)."""
    if pair_removed.query_labels is None:
        return {}
    space = PcaSpace(pair_removed.ref_rna, seed)
    score = knn_ood_score(space.ref, space.transform(pair_removed.query_rna))
    return ood_eval(score, pair_removed.query_labels, removed_type)
