"""A reference pooled on the union of several datasets' genes: each cell's unmeasured genes are left out (the
training mean), in the preprocessing fit, in training batches and when the pooled store is embedded, exactly as
for a query that lacks them."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from omicsclip.config import default_config, load_config
from omicsclip.errors import InputError
from omicsclip.io.panels import store_gene_masks
from omicsclip.io.pool import pool_stores
from omicsclip.io.store import read_store, store_info, write_store
from omicsclip.io.synthetic import make_synthetic
from omicsclip.model.alignment import align_proteins, align_rna
from omicsclip.model.batchops import gather_rows, model_inputs
from omicsclip.model.modelio import load_model
from omicsclip.model.preprocess import TorchPreprocessor, fit_preprocessing
from omicsclip.train.data import DeviceCells
from omicsclip.train.run import train_model

PRE = {k: v for k, v in default_config()["preprocess"].items() if k != "genes"}


def two_gene_sets(tmp_path, n=300):
    """Lab A measured genes 0-69, lab B genes 10-79 (and different panels): the union has 80 genes."""
    d = make_synthetic(n_cells=2 * n, n_genes=80, n_proteins=10, n_types=4, seed=5)
    a, b = d.subset(np.arange(n)), d.subset(np.arange(n, 2 * n))
    a.rna, a.genes = a.rna[:, :70], a.genes.iloc[:70]
    b.rna, b.genes = b.rna[:, 10:], b.genes.iloc[10:]
    a.prot, a.proteins = a.prot[:, :7], a.proteins.iloc[:7]
    b.prot, b.proteins = b.prot[:, 3:], b.proteins.iloc[3:]
    stores = [write_store(a, tmp_path / "labA.zarr"), write_store(b, tmp_path / "labB.zarr")]
    return pool_stores(stores, tmp_path / "pooled.zarr"), a, b


def test_fit_counts_only_the_cells_that_measured_each_gene(tmp_path):
    pooled, a, b = two_gene_sets(tmp_path)
    data, info = read_store(pooled), store_info(pooled)
    codes, table = store_gene_masks(info)
    kw = {**PRE, "n_hvg": 0, "n_pcs": 5, "protein_genes": 0}
    state = fit_preprocessing(data.rna, data.prot, data.gene_names, data.protein_names, **kw,
                              gene_masks=(codes, table))
    only_b = fit_preprocessing(b.rna, b.prot, b.gene_names, b.protein_names, **kw)
    genes = pd.Index(state.genes)
    assert set(genes) == set(data.gene_names)  # every dataset's genes are model genes
    assert state.gene_panels == [[g for g in state.genes if g in set(a.gene_names)],
                                 [g for g in state.genes if g in set(b.gene_names)]]
    # a gene only lab B measured: scaled on lab B's cells alone, not on lab A's zeros
    for g in data.gene_names[70:]:
        i, j = genes.get_loc(g), only_b.genes.index(g)
        assert state.rna_mean[i] == pytest.approx(only_b.rna_mean[j], rel=1e-4)
        assert state.rna_std[i] == pytest.approx(only_b.rna_std[j], rel=1e-4)
    # lab B's own gene set is complete for the model (its closest training dataset), never refused or warned of
    _, _, report = align_rna(b.rna, b.gene_names, state)
    assert report.n_missing == 10
    assert report.missing_fraction == 0.0
    # a query with half of lab B's genes is judged against lab B's set
    state.max_missing_gene_fraction = 0.2
    with pytest.raises(InputError, match="lacks 35 of the 70 genes of the training dataset it covers best"):
        align_rna(b.rna[:, :35], b.gene_names[:35], state)


def test_gathered_batches_carry_each_cells_measured_genes():
    indptr = torch.tensor([0, 1, 2, 3])
    idx_same, idx_mixed = torch.tensor([0, 2]), torch.tensor([0, 1])
    table = torch.tensor([[True, False, True], [False, True, True]])
    codes = torch.tensor([0, 1, 0])
    args = (indptr, torch.tensor([0, 1, 2], dtype=torch.int32), torch.ones(3), torch.zeros(3), torch.zeros(3, 2))
    same = gather_rows(*args, idx_same, codes, table)
    assert same.gene_keep.tolist() == [True, False, True]  # one dataset: one mask (the cheap path)
    mixed = gather_rows(*args, idx_mixed, codes, table)
    assert mixed.gene_keep.tolist() == [[True, False, True], [False, True, True]]
    assert gather_rows(*args, idx_same).gene_keep is None


def test_pooled_training_inputs_equal_each_labs_own_inputs_and_embeddings(tmp_path):
    from omicsclip.model.embed import embed_store, open_embeddings

    pooled, a, b = two_gene_sets(tmp_path)
    cfg = load_config(None, [*TINY, "preprocess.n_pcs=8", "preprocess.protein_genes=2"])
    out = tmp_path / "model"
    train_model(pooled, out, cfg)
    model = load_model(out)
    state = model.state
    assert state.gene_panels is not None
    assert len(state.genes) > len(state.gene_panels[0])
    pre = TorchPreprocessor(state)
    n_a = a.n_cells
    rows = np.arange(n_a - 20, n_a + 20)  # the last lab A cells and the first lab B cells: a mixed batch
    cells = DeviceCells.from_store(pooled, rows, state, "cpu")
    x_train, _ = model_inputs(cells.gather(torch.arange(cells.n_cells)), pre)
    for lab, sl in ((a, slice(n_a - 20, n_a)), (b, slice(0, 20))):  # the inference path: the lab's own genes
        counts, lib, report = align_rna(lab.rna[sl], lab.gene_names, state)
        keep = torch.ones(len(state.genes), dtype=torch.bool)
        keep[pd.Index(state.genes).get_indexer(report.missing)] = False
        x = pre.rna_sparse(*_coo(counts), torch.as_tensor(lib, dtype=torch.float32), counts.shape[0], keep)
        part = x_train[:20] if lab is a else x_train[20:]
        torch.testing.assert_close(part, x, rtol=1e-4, atol=1e-4)
    emb = open_embeddings(embed_store(pooled, out, tmp_path / "emb.zarr"))
    own = model.embed(rna=b.rna, prot=b.prot, genes=b.gene_names, proteins=b.protein_names)
    np.testing.assert_allclose(emb.matrix("rna")[n_a:], own["rna"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb.matrix("prot")[n_a:], own["prot"], rtol=1e-4, atol=1e-5)
    # encoder fine-tuning's inputs (the layers below the projections) are the embedding's, cell by cell
    from omicsclip.heads.tuning import penultimate_features
    from omicsclip.model.encoders import normalize_members

    data, masks = read_store(pooled), store_gene_masks(store_info(pooled))
    hr, hp = penultimate_features(model, data.rna, data.prot, genes=data.gene_names, proteins=data.protein_names,
                                  gene_masks=masks)
    with torch.no_grad():
        for key, h, enc in (("rna", hr, model.model.rna), ("prot", hp, model.model.prot)):
            tuned_input = normalize_members(enc.proj(torch.as_tensor(h)), model.model.members).numpy()
            np.testing.assert_allclose(tuned_input, emb.matrix(key), rtol=1e-4, atol=1e-5)
    none = penultimate_features(model, data.rna[:0], data.prot[:0], genes=data.gene_names,
                                proteins=data.protein_names, gene_masks=(masks[0][:0], masks[1]))
    assert [h.shape for h in none] == [(0, hr.shape[1]), (0, hp.shape[1])]


def _coo(counts):
    counts = counts.tocsr()
    row = torch.as_tensor(np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr)))
    return row, torch.as_tensor(counts.indices.astype(np.int64)), torch.as_tensor(counts.data)


def test_a_pooled_store_holds_out_each_datasets_own_test_cells(tmp_path):
    from omicsclip.io.panels import DATASET_COLUMN
    from omicsclip.io.split import make_split

    pooled, a, b = two_gene_sets(tmp_path)
    obs = store_info(pooled)["obs"]
    split = make_split(obs, seed=3, group=DATASET_COLUMN)
    assert split.index.equals(obs.index)
    for lab, name in ((a, "labA"), (b, "labB")):
        own = make_split(lab.obs, seed=3)  # the split of the lab's own store
        mine = split[(obs[DATASET_COLUMN] == name).to_numpy()]
        assert mine.tolist() == own.tolist()
    assert not make_split(obs, seed=3).equals(split)  # one split over the pooled cells would differ


def test_new_cells_with_more_genes_are_presented_as_their_closest_training_dataset(tmp_path, caplog):
    """A query that measured every union gene (no training cell did) is embedded as the training dataset it covers
    best: genes that dataset lacked are left out and the library counts that dataset's genes only."""
    pooled, a, b = two_gene_sets(tmp_path)
    cfg = load_config(None, [*TINY, "preprocess.n_pcs=8", "preprocess.protein_genes=2"])
    with caplog.at_level(logging.INFO, logger="omicsclip.model.geneselect"):
        train_model(pooled, tmp_path / "model", cfg)
    assert "highly variable genes among the 70 genes of dataset labB" in caplog.text
    model = load_model(tmp_path / "model")
    state = model.state
    assert [len(p) for p in state.library_panels] == [70, 70]
    full = make_synthetic(n_cells=600, n_genes=80, n_proteins=10, n_types=4, seed=5).subset(np.arange(300, 600))
    # both labs' model genes are complete in the full query: the lab with more model genes is the one it is shown as
    best = int(np.argmax([len(p) for p in state.gene_panels]))
    lab = (a, b)[best]
    as_full = model.embed(rna=full.rna, genes=full.gene_names)["rna"]
    cols = pd.Index(full.gene_names).get_indexer(lab.gene_names)
    as_lab = model.embed(rna=full.rna[:, cols], genes=lab.gene_names)["rna"]
    np.testing.assert_allclose(as_full, as_lab, rtol=1e-5, atol=1e-6)
    counts, lib, report = align_rna(full.rna, full.gene_names, state, as_closest_dataset=True)
    np.testing.assert_allclose(lib, np.asarray(full.rna[:, cols].sum(axis=1)).ravel())
    assert report.missing_fraction == 0.0  # complete for that dataset: no warning, no refusal
    # the other dataset's genes are left out (not fed to the model), and not reported as missing: the input has them
    assert set(report.left_out) == set(state.genes) - set(state.gene_panels[best])
    assert not report.missing
    assert report.to_dict()["n_left_out"] == len(report.left_out)
    mask = report.present_mask(state.genes)
    assert not mask[pd.Index(state.genes).get_indexer(report.left_out)].any()
    assert mask.sum() == len(state.genes) - len(report.left_out)
    # a refusal counts and names the genes the input lacks, not ones it has but that are left out
    shared = [g for g in state.gene_panels[0] if g in set(state.gene_panels[1])]
    drop = set(shared[: int(0.3 * min(len(p) for p in state.gene_panels)) + 1])
    kept = [i for i, g in enumerate(full.gene_names) if g not in drop]
    with pytest.raises(InputError, match="max_missing_gene_fraction") as err:
        align_rna(full.rna[:, kept], [full.gene_names[i] for i in kept], state, as_closest_dataset=True)
    # not the left-out ones too
    assert state.datasets == ["labA", "labB"]  # the messages name the training datasets
    assert f"lacks {len(drop & set(state.genes))} of the {len(state.gene_panels[best])} genes of the training " \
           f"dataset it covers best, {['labA', 'labB'][best]}" in str(err.value)
    examples = str(err.value).split("e.g. ")[1].split(";")[0].split(", ")
    assert examples
    assert set(examples) <= drop
    # proteins alike: a cell with every union protein is embedded as its closest training panel's cells, and a
    # pooled store's own rows (NaN outside their panel) each keep their own panel
    closest = state.panels[0] if len(state.panels[0]) >= len(state.panels[1]) else state.panels[1]
    pcols = pd.Index(full.protein_names).get_indexer(closest)
    as_full_prot = model.embed(prot=full.prot, proteins=full.protein_names)["prot"]
    assert model.last_report["prot"]["n_left_out"] == len(state.proteins) - len(closest)
    as_panel = model.embed(prot=full.prot[:, pcols], proteins=closest)["prot"]
    np.testing.assert_allclose(as_full_prot, as_panel, rtol=1e-5, atol=1e-6)
    rows = read_store(tmp_path / "pooled.zarr")
    _, present, rep_rows = align_proteins(rows.prot, rows.protein_names, state, as_closest_dataset=True)
    np.testing.assert_array_equal(present, ~np.isnan(rows.prot))
    assert rep_rows.left_out == []
    # a pooled store's own rows keep the union view (their unmeasured genes are masked per cell by the caller)
    _, lib_union, rep_union = align_rna(full.rna, full.gene_names, state)
    assert not rep_union.missing
    np.testing.assert_allclose(lib_union, np.asarray(full.rna.sum(axis=1)).ravel())


def test_a_pooled_store_embedded_by_another_model_holds_each_dataset_to_its_limits(tmp_path):
    """A model trained on lab A alone embeds the store pooled from labs A and B: lab B's cells lack 3 of A's 7
    proteins (their panel has only 4 of them; the store's zeros outside it are not counts). They are refused
    above the model's limit, naming the dataset, and below it each lab's cells get their own missing fraction."""
    from omicsclip.model.embed import PROT_MISSING_COLUMN, embed_store, open_embeddings

    pooled, a, b = two_gene_sets(tmp_path)
    for limit in (0.4, 0.5):
        out = tmp_path / f"model_{limit}"
        cfg = load_config(None, [*TINY, "preprocess.n_pcs=8", f"preprocess.max_missing_protein_fraction={limit}"])
        train_model(tmp_path / "labA.zarr", out, cfg)
        emb_path = tmp_path / f"emb_{limit}.zarr"
        if limit < 3 / 7:
            with pytest.raises(InputError, match=r"pooled.zarr, dataset 'labB': protein input lacks 3 of the "
                                                 r"model's 7 proteins \(43% > max_missing_protein_fraction=0.4\)"):
                embed_store(pooled, out, emb_path)
            assert not emb_path.exists()
            continue
        emb = open_embeddings(embed_store(pooled, out, emb_path))
        frac = emb.obs[PROT_MISSING_COLUMN].to_numpy()
        np.testing.assert_allclose(frac[: a.n_cells], 0.0)
        np.testing.assert_allclose(frac[a.n_cells :], 3 / 7, rtol=1e-6)
        model = load_model(out)
        own = model.embed(prot=b.prot, proteins=b.protein_names)["prot"]
        np.testing.assert_allclose(emb.matrix("prot")[a.n_cells :], own, rtol=1e-4, atol=1e-5)
