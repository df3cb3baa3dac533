"""Preprocessing: fitted on training cells, saved, and applied identically to new cells matched by name."""

from __future__ import annotations

import dataclasses
import json
import logging

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from omicsclip.config import default_config
from omicsclip.errors import InputError
from omicsclip.model.alignment import align_proteins, align_rna
from omicsclip.model.preprocess import (
    PreprocessState,
    TorchPreprocessor,
    clr,
    fit_preprocessing,
    log_normalize,
    select_protein_genes,
)

# the config's preprocess section with the plain model input (the scaled genes: no PCs, protein genes or depth)
PLAIN = {**{k: v for k, v in default_config()["preprocess"].items() if k != "genes"}, "n_pcs": 0, "protein_genes": 0, "depth_features": False}


def fit(rna, prot, genes, proteins, **kw):
    """``fit_preprocessing`` with :data:`PLAIN` settings, ``kw`` overriding them."""
    return fit_preprocessing(rna, prot, genes, proteins, **{**PLAIN, **kw})


def _data(n=300, g=120, p=6, seed=0):
    rng = np.random.default_rng(seed)
    scale = rng.gamma(0.5, 2.0, size=g)  # heterogeneous gene means/variances
    rna = sp.csr_matrix(rng.poisson(scale * rng.uniform(0.5, 2, (n, 1))).astype(np.float32))
    prot = rng.poisson(rng.uniform(5, 200, p), size=(n, p)).astype(np.float32)
    genes = [f"G{i}" for i in range(g)]
    prots = [f"P{i}" for i in range(p)]
    return rna, prot, genes, prots


@pytest.fixture(scope="module")
def fitted():
    rna, prot, genes, prots = _data()
    state = fit(rna, prot, genes, prots, n_hvg=40, target_sum=1e4, max_value=10.0)
    return rna, prot, genes, prots, state


def test_log_normalize_matches_scanpy():
    rna, *_ = _data(n=50, g=30)
    a = ad.AnnData(rna.copy())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    np.testing.assert_allclose(log_normalize(rna, 1e4).toarray(), a.X.toarray(), rtol=1e-5, atol=1e-6)


def test_log_normalize_in_row_blocks_is_the_float64_result():
    """Blocks of rows (bounded temporaries) give the float64-then-float32 values (numpy's SIMD log1p may differ
    in the last float64 bit between a block's body and its tail, so a float32 value may round one ulp apart)."""
    rna, *_ = _data(n=50, g=30)
    lib = np.asarray(rna.sum(axis=1)).ravel()
    ref = sp.csr_matrix(sp.diags(1e4 / np.where(lib > 0, lib, 1.0)) @ sp.csr_matrix(rna, dtype=np.float64))
    ref.data = np.log1p(ref.data)
    got = log_normalize(rna, 1e4, chunk_cells=7)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.toarray(), ref.astype(np.float32).toarray(), rtol=2e-7, atol=0)
    assert np.array_equal(got.indptr, sp.csr_matrix(rna).indptr)
    assert np.array_equal(got.indices, sp.csr_matrix(rna).indices)


def test_hvg_are_scanpy_seurat_and_keep_store_order(fitted):
    rna, _, genes, _, state = fitted
    assert len(state.genes) == 40
    pos = [genes.index(g) for g in state.genes]
    assert pos == sorted(pos)
    a = ad.AnnData(log_normalize(rna, 1e4))
    a.var_names = genes
    sc.pp.highly_variable_genes(a, n_top_genes=40, flavor="seurat")
    assert set(state.genes) == set(a.var_names[a.var["highly_variable"]])


def test_n_hvg_zero_keeps_all_expressed_genes():
    rna, prot, genes, prots = _data(g=20)
    rna = sp.csr_matrix(rna.toarray() * (np.arange(20) != 3))  # gene 3 never expressed
    state = fit(rna, prot, genes, prots, n_hvg=0)
    expressed = np.asarray(rna.sum(0)).ravel() > 0
    assert "G3" not in state.genes
    assert state.genes == [g for i, g in enumerate(genes) if expressed[i]]


def test_scaling_is_fitted_on_given_cells_only(fitted):
    rna, prot, genes, prots, state = fitted
    x = log_normalize(rna, 1e4)[:, [genes.index(g) for g in state.genes]].toarray()
    np.testing.assert_allclose(state.rna_mean, x.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.rna_std, x.std(0), rtol=1e-4, atol=1e-5)
    other = fit(rna[:100], prot[:100], genes, prots, n_hvg=40)
    assert not np.allclose(other.prot_mean, state.prot_mean)


def test_torch_transform_matches_numpy_reference(fitted):
    rna, prot, genes, prots, state = fitted
    pre = TorchPreprocessor(state)
    counts, lib, report = align_rna(rna, genes, state)
    assert report.n_missing == 0
    got = pre.rna(torch.as_tensor(counts.toarray()), torch.as_tensor(lib)).numpy()
    x = log_normalize(rna, 1e4)[:, [genes.index(g) for g in state.genes]].toarray()
    ref = np.clip((x - state.rna_mean) / state.rna_std, -10, 10)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    gp = pre.prot(torch.as_tensor(prot)).numpy()
    np.testing.assert_allclose(gp, (clr(prot) - state.prot_mean) / state.prot_std, rtol=1e-4, atol=1e-4)


def test_clr_is_per_cell_centred():
    _, prot, *_ = _data()
    c = clr(prot)
    np.testing.assert_allclose(c.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(c[0], np.log1p(prot[0]) - np.log1p(prot[0]).mean(), atol=1e-5)


def test_genome_prefixed_genes_in_memory_match_the_model(fitted, caplog):
    """Counts handed over in memory with ``GRCh38_``-prefixed genes match a model trained on plain names."""
    rna, _, genes, _, state = fitted
    c1, l1, _ = align_rna(rna, genes, state)
    with caplog.at_level(logging.INFO):
        c2, l2, report = align_rna(rna, [f"GRCh38_{g}" for g in genes], state)
    assert (c1 != c2).nnz == 0
    assert not report.missing
    np.testing.assert_array_equal(l1, l2)
    assert any("without their genome prefix (input 'GRCh38_', model '')" in r.getMessage() for r in caplog.records)
    # a model whose genes carry a prefix (trained on a store written before prefixes were removed) meets
    # plain names, e.g. its own store read by a query
    prefixed = dataclasses.replace(state, genes=[f"hg19_{g}" for g in state.genes],
                                   all_genes=[f"hg19_{g}" for g in state.all_genes])
    c3, l3, report = align_rna(rna, genes, prefixed)
    assert (c1 != c3).nnz == 0
    assert not report.missing
    np.testing.assert_array_equal(l1, l3)


def test_new_cells_matched_by_name_identically(fitted):
    rna, prot, genes, prots, state = fitted
    pre = TorchPreprocessor(state)
    rng = np.random.default_rng(1)
    order, porder = rng.permutation(len(genes)), rng.permutation(len(prots))
    c1, l1, _ = align_rna(rna, genes, state)
    c2, l2, _ = align_rna(rna[:, order], [genes[i] for i in order], state)
    assert (c1 != c2).nnz == 0
    np.testing.assert_array_equal(l1, l2)
    p1, m1, _ = align_proteins(prot, prots, state)
    p2, m2, _ = align_proteins(prot[:, porder], [prots[i] for i in porder], state)
    np.testing.assert_array_equal(p1, p2)
    assert torch.equal(pre.prot(torch.as_tensor(p1)), pre.prot(torch.as_tensor(p2), torch.as_tensor(m2)))


def test_missing_genes_zero_filled_and_reported(fitted, caplog):
    rna, _, genes, _, state = fitted
    drop = set(state.genes[:4])  # 10% of the model's genes
    keep = [i for i, g in enumerate(genes) if g not in drop]
    with caplog.at_level(logging.WARNING):
        counts, lib, report = align_rna(rna[:, keep], [genes[i] for i in keep], state)
    assert report.n_missing == 4
    assert sorted(report.missing) == sorted(drop)
    assert report.missing_fraction == pytest.approx(0.1)
    assert "lacks 4" in caplog.text
    assert counts[:, :4].nnz == 0
    # library size comes from the input's own genes
    np.testing.assert_allclose(lib, np.asarray(rna[:, keep].sum(1)).ravel())
    pre = TorchPreprocessor(state)
    present = torch.ones(len(state.genes))
    present[:4] = 0
    x = pre.rna(torch.as_tensor(counts.toarray()), torch.as_tensor(lib), present)
    assert torch.all(x[:, :4] == 0)


def test_too_many_missing_genes_is_an_error(fitted):
    rna, _, genes, _, state = fitted
    drop = set(state.genes[:10])  # 25% > 20%
    keep = [i for i, g in enumerate(genes) if g not in drop]
    with pytest.raises(InputError, match="max_missing_gene_fraction"):
        align_rna(rna[:, keep], [genes[i] for i in keep], state)


def test_unnamed_inputs(fitted):
    rna, prot, genes, prots, state = fitted
    c1, _, _ = align_rna(rna, None, state)  # full training width -> training gene order
    c2, _, _ = align_rna(rna, genes, state)
    assert (c1 != c2).nnz == 0
    with pytest.raises(InputError, match="no gene names"):
        align_rna(rna[:, :7], None, state)
    with pytest.raises(InputError, match="not unique"):
        align_rna(rna[:, :2], ["A", "A"], state)


def test_proteins_partial_overlap_and_no_overlap(fitted):
    _, prot, _, prots, state = fitted
    p, present, report = align_proteins(prot[:, 2:], prots[2:], state)
    assert present.tolist() == [False, False] + [True] * (len(prots) - 2)
    assert report.missing == prots[:2]
    x = TorchPreprocessor(state).prot(torch.as_tensor(p), torch.as_tensor(present))
    assert torch.all(x[:, :2] == 0)
    with pytest.raises(InputError, match="shares no protein"):
        align_proteins(prot[:, :2], ["X1", "X2"], state)


def test_state_json_roundtrip(fitted):
    *_, state = fitted
    back = PreprocessState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back.genes == state.genes
    assert back.proteins == state.proteins
    np.testing.assert_allclose(back.rna_std, state.rna_std)
    with pytest.raises(InputError):
        PreprocessState.from_dict({"genes": []})
    named = PreprocessState.from_dict({**state.to_dict(), "datasets": ["labA", "labB"]})
    assert named.datasets == ["labA", "labB"]
    old = state.to_dict()
    del old["datasets"]  # a model saved before the datasets' names were kept
    assert PreprocessState.from_dict(old).datasets is None


def test_no_scaling_options():
    rna, prot, genes, prots = _data()
    state = fit(rna, prot, genes, prots, n_hvg=10, scale_rna=False, scale_prot=False)
    assert state.rna_mean is None
    assert state.prot_mean is None
    pre = TorchPreprocessor(state)
    c, lib, _ = align_rna(rna, genes, state)
    x = pre.rna(torch.as_tensor(c.toarray()), torch.as_tensor(lib))
    assert torch.all(x >= 0)


def test_principal_axes_projection(fitted):
    from sklearn.decomposition import PCA

    rna, prot, genes, prots, _ = fitted
    state = fit(rna, prot, genes, prots, n_hvg=40, n_pcs=5)
    assert state.rna_pcs.shape == (5, 40)
    x = np.clip((log_normalize(rna, 1e4)[:, [genes.index(g) for g in state.genes]].toarray() - state.rna_mean)
                / state.rna_std, -10, 10)
    ref = PCA(5).fit(x).components_
    np.testing.assert_allclose(np.abs(state.rna_pcs @ ref.T), np.eye(5), atol=1e-3)  # same axes up to sign
    pre = TorchPreprocessor(state)
    c, lib, _ = align_rna(rna, genes, state)
    z = pre.rna(torch.as_tensor(c.toarray()), torch.as_tensor(lib))
    assert pre.rna_dim == 5
    assert z.shape == (rna.shape[0], 5)
    np.testing.assert_allclose(z.numpy(), x @ state.rna_pcs.T, rtol=1e-3, atol=1e-3)
    back = PreprocessState.from_dict(json.loads(json.dumps(state.to_dict())))
    np.testing.assert_allclose(back.rna_pcs, state.rna_pcs)


def test_depth_features_append_standardised_log_totals(fitted):
    rna, prot, genes, prots, _ = fitted
    state = fit(rna, prot, genes, prots, n_hvg=40, n_pcs=5, depth_features=True)
    lr = np.log1p(np.asarray(rna.sum(1)).ravel())
    lp = np.log1p(prot.sum(1))
    np.testing.assert_allclose(state.depth, [lr.mean(), lr.std(), lp.mean(), lp.std()], rtol=1e-5)
    pre = TorchPreprocessor(state)
    assert (pre.rna_dim, pre.prot_dim) == (6, len(prots) + 1)
    c, lib, _ = align_rna(rna, genes, state)
    x = pre.rna(torch.as_tensor(c.toarray()), torch.as_tensor(lib))
    np.testing.assert_allclose(x[:, -1].numpy(), (lr - lr.mean()) / lr.std(), rtol=1e-4, atol=1e-4)
    y = pre.prot(torch.as_tensor(prot))
    np.testing.assert_allclose(y[:, -1].numpy(), (lp - lp.mean()) / lp.std(), rtol=1e-4, atol=1e-4)
    back = PreprocessState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back.depth == pytest.approx(state.depth)


def test_select_protein_genes_is_top_abs_pearson_per_protein():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 30)).astype(np.float32) + 5.0  # an offset: the sums must be centred
    x[:, 7] = 2.0  # constant gene: r = 0, never picked
    y = np.stack([x[:, 3] + 0.5 * rng.normal(size=500), -x[:, 11] + 0.1 * x[:, 3] + rng.normal(size=500),
                  np.full(500, 4.0)], axis=1)  # the last protein is constant: no gene is picked for it
    got = select_protein_genes(x, y, 2, chunk=64)  # chunked sums, as on big training sets
    ref = []
    for p in range(2):
        r = np.abs([np.corrcoef(x[:, g], y[:, p])[0, 1] if x[:, g].std() > 0 else 0.0 for g in range(30)])
        ref += [int(g) for g in np.argsort(-r, kind="stable")[:2] if g not in ref]
    assert got.tolist() == ref
    assert got[0] == 3
    assert 11 in got.tolist()
    assert 7 not in got.tolist()
    assert len(set(got.tolist())) == len(got)  # a gene picked twice enters once


def test_select_protein_genes_budget_keeps_every_proteins_best_genes():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2000, 60)).astype(np.float32)
    y = np.stack([x[:, 10 * p : 10 * p + 4] @ np.array([4.0, 3.0, 2.0, 1.0]) for p in range(6)], axis=1)
    full = select_protein_genes(x, y, 4)
    assert full.tolist() == [10 * p + i for p in range(6) for i in range(4)]  # by protein, best first
    cut = select_protein_genes(x, y, 4, max_genes=15)
    assert len(cut) == 15
    assert set(cut.tolist()) <= set(full.tolist())
    assert {g // 10 for g in cut.tolist() if g % 10 < 2} == set(range(6))  # every protein's two best kept


def test_protein_genes_enter_the_rna_input_beside_the_pcs(fitted, caplog):
    rna, _, genes, prots, _ = fitted
    lognorm = log_normalize(rna, 1e4).toarray()
    prot = np.round(np.expm1(lognorm[:, :6]) * 3 + 5).astype(np.float32)  # protein p follows gene p
    state = fit(rna, prot, genes, prots, n_hvg=40, n_pcs=5, protein_genes=1, depth_features=True)
    pg = state.protein_genes
    assert pg
    assert len(pg) <= 6
    assert set(pg) <= set(state.genes)
    x = np.clip((lognorm[:, [genes.index(g) for g in state.genes]] - state.rna_mean) / state.rna_std, -10, 10)
    assert pg == [state.genes[i] for i in select_protein_genes(x, clr(prot), 1)]  # picked on the scaled HVGs
    pre = TorchPreprocessor(state)
    assert pre.rna_dim == 5 + len(pg) + 1
    c, lib, _ = align_rna(rna, genes, state)
    z = pre.rna(torch.as_tensor(c.toarray()), torch.as_tensor(lib)).numpy()
    np.testing.assert_allclose(z[:, :5], x @ state.rna_pcs.T, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(z[:, 5:-1], x[:, [state.genes.index(g) for g in pg]], rtol=1e-4, atol=1e-4)
    # the training path (from the non-zeros) gives the same input
    row = torch.as_tensor(np.repeat(np.arange(c.shape[0]), np.diff(c.indptr)))
    zs = pre.rna_sparse(row, torch.as_tensor(c.indices.astype(np.int64)), torch.as_tensor(c.data),
                        torch.as_tensor(lib), c.shape[0])
    np.testing.assert_allclose(zs.numpy(), z, rtol=1e-4, atol=1e-4)
    back = PreprocessState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back.protein_genes == pg
    np.testing.assert_array_equal(back.rna_projection, state.rna_projection)
    # a protein gene missing from new cells is the training mean, 0, like any missing gene
    keep = [g for g in genes if g != pg[0]]
    with caplog.at_level(logging.WARNING, logger="omicsclip.model.preprocess"):
        c2, lib2, report = align_rna(rna[:, [genes.index(g) for g in keep]], keep, state)
    assert f"protein genes of the model (inputs picked for their correlation with a protein): {pg[0]}" in caplog.text
    present = torch.ones(len(state.genes))
    present[state.genes.index(pg[0])] = 0
    z2 = pre.rna(torch.as_tensor(c2.toarray()), torch.as_tensor(lib2), present).numpy()
    assert report.missing == [pg[0]]
    assert np.all(z2[:, 5] == 0)


def test_protein_genes_need_pcs_and_old_states_have_none(fitted):
    rna, prot, genes, prots, state = fitted
    no_pcs = fit(rna, prot, genes, prots, n_hvg=40, protein_genes=3)
    assert no_pcs.protein_genes is None
    assert no_pcs.rna_projection is None
    d = state.to_dict()
    d.pop("protein_genes")  # a model saved before the option existed
    assert PreprocessState.from_dict(d).protein_genes is None
    with_pcs = fit(rna, prot, genes, prots, n_hvg=40, n_pcs=3, protein_genes=2)
    bad = with_pcs.to_dict()
    bad["protein_genes"] = ["not-a-model-gene"]
    with pytest.raises(InputError, match="protein_genes"):
        TorchPreprocessor(PreprocessState.from_dict(bad))


def test_fit_preprocessing_takes_every_setting_from_the_config_section():
    """One keyword per key of the ``preprocess`` section and no default in code (configs/default.yaml has them)."""
    import inspect

    params = inspect.signature(fit_preprocessing).parameters
    keyword = {name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    # preprocess.genes (a list, a file, or --genes-from) is resolved by the training run into library_genes;
    # panels, gene masks and each cell's dataset and their names come from the store, not the config
    from_store = {"library_genes", "panels", "gene_masks", "dataset_codes", "datasets"}
    assert keyword - from_store == set(default_config()["preprocess"]) - {"genes"}
    assert all(params[name].default is inspect.Parameter.empty for name in keyword - from_store)
