"""Training across datasets: per-cell protein panels, panel and gene masking, batches within one dataset,
shared gene sets, and a pooled reference trained and evaluated end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import TINY

from omicsclip.config import default_config, load_config
from omicsclip.errors import InputError
from omicsclip.io.store import store_info, write_store
from omicsclip.io.synthetic import make_synthetic
from omicsclip.model.alignment import align_proteins, align_rna
from omicsclip.model.batchops import Augmentation, CountTransform, RawBatch, model_inputs
from omicsclip.model.modelio import load_model
from omicsclip.model.preprocess import fit_preprocessing
from omicsclip.train.data import grouped_order
from omicsclip.train.run import prepare_training_store, train_model

PLAIN = {**{k: v for k, v in default_config()["preprocess"].items() if k != "genes"}, "n_hvg": 0, "n_pcs": 0,
         "protein_genes": 0, "depth_features": True}


def transform(n_proteins: int = 4) -> CountTransform:
    g = torch.Generator().manual_seed(0)
    return CountTransform(n_genes=3, target_sum=1e4, max_value=10.0, prot_mean=torch.rand(n_proteins, generator=g),
                          prot_std=torch.rand(n_proteins, generator=g) + 0.5, n_proteins=n_proteins,
                          depth=(0.0, 1.0, 0.0, 1.0))


def test_per_cell_protein_mask_equals_each_cells_own_panel():
    t = transform()
    counts = torch.tensor([[5.0, 0.0, 7.0, 3.0], [1.0, 9.0, 0.0, 4.0]])
    masks = torch.tensor([[True, False, True, True], [False, True, True, True]])
    both = t.prot(counts, masks)
    for i in range(2):
        assert torch.allclose(both[i], t.prot(counts[i : i + 1], masks[i])[0])
    assert both[0, 1] == 0.0  # an unmeasured protein's input is the training mean
    assert both[1, 0] == 0.0


def batch_with(prot: torch.Tensor) -> RawBatch:
    n = prot.shape[0]
    row = torch.arange(n).repeat_interleave(2)
    return RawBatch(n=n, row=row, col=torch.tensor([0, 2] * n), val=torch.full((2 * n,), 3.0),
                    other=torch.full((n,), 100.0), prot=prot)


def test_unmeasured_proteins_nan_are_left_out_of_training_inputs():
    t = transform()
    prot = torch.tensor([[5.0, float("nan"), 7.0, 3.0], [1.0, 9.0, 2.0, 4.0]])
    _, x = model_inputs(batch_with(prot), t)
    assert torch.isfinite(x).all()
    expect = t.prot(torch.nan_to_num(prot), ~torch.isnan(prot))
    assert torch.allclose(x, expect)
    aug = Augmentation(thinning=0.5, prot_feature_dropout=0.3)
    _, xa = model_inputs(batch_with(prot), t, aug, torch.Generator().manual_seed(1))
    assert torch.isfinite(xa).all()
    assert xa[0, 1] == 0.0


def test_panel_masking_recomputes_the_clr_over_the_kept_proteins():
    t = transform()
    prot = torch.tensor([[50.0, 1.0, 7.0, 30.0]] * 64)
    _, x = model_inputs(batch_with(prot), t, Augmentation(prot_feature_dropout=0.5), torch.Generator().manual_seed(2))
    dropped = x[:, :4] == 0
    assert dropped.any()
    assert (~dropped).any()
    i = int(torch.nonzero(dropped.any(1))[0])
    keep = ~dropped[i]
    assert torch.allclose(x[i], t.prot(prot[i : i + 1], keep)[0], atol=1e-6)


def test_gene_masking_masks_one_gene_subset_per_batch():
    n_genes = 200
    t = CountTransform(n_genes=n_genes, target_sum=1e4, max_value=10.0, rna_mean=torch.full((n_genes,), 0.5),
                       rna_std=torch.ones(n_genes), n_proteins=1)
    n = 32
    rna = sp.random(n, n_genes, density=0.5, format="csr", random_state=0, dtype=np.float32)
    rna.data[:] = 2.0
    coo = rna.tocoo()
    batch = RawBatch(n=n, row=torch.as_tensor(coo.row, dtype=torch.int64), col=torch.as_tensor(coo.col, dtype=torch.int64),
                     val=torch.as_tensor(coo.data), other=torch.zeros(n), prot=torch.ones(n, 1))
    x, _ = model_inputs(batch, t, Augmentation(gene_masking=0.5), torch.Generator().manual_seed(0))
    zero_cols = (x == 0).all(0)
    assert 0 < int(zero_cols.sum()) <= 0.5 * n_genes + 20  # one subset, the same for every cell
    x_plain, _ = model_inputs(batch, t)
    assert torch.equal(x[:, ~zero_cols], x_plain[:, ~zero_cols])


def test_gene_shift_scales_each_gene_by_one_factor_for_the_whole_batch():
    n_genes, n = 50, 16
    t = CountTransform(n_genes=n_genes, target_sum=1e4, max_value=10.0, rna_mean=torch.full((n_genes,), 0.5),
                       rna_std=torch.ones(n_genes), n_proteins=1)
    rna = sp.random(n, n_genes, density=0.5, format="csr", random_state=1, dtype=np.float32)
    rna.data[:] = np.arange(1, rna.nnz + 1) % 7 + 1
    coo = rna.tocoo()
    row, col = torch.as_tensor(coo.row, dtype=torch.int64), torch.as_tensor(coo.col, dtype=torch.int64)
    batch = RawBatch(n=n, row=row, col=col, val=torch.as_tensor(coo.data), other=torch.full((n,), 100.0),
                     prot=torch.ones(n, 1))
    x, xp = model_inputs(batch, t, Augmentation(gene_shift=0.5), torch.Generator().manual_seed(3))
    factor = torch.exp(0.5 * torch.randn(n_genes, generator=torch.Generator().manual_seed(3)) - 0.125)  # mean 1
    assert factor.min() < 0.8  # the draw is a real shift, not ~1
    assert factor.max() > 1.25
    shifted = RawBatch(n=n, row=row, col=col, val=batch.val * factor[col], other=batch.other, prot=batch.prot)
    assert torch.allclose(x, model_inputs(shifted, t)[0], atol=1e-5)  # library sizes follow the scaled counts
    assert not torch.allclose(x, model_inputs(batch, t)[0], atol=1e-3)
    assert torch.equal(xp, model_inputs(batch, t)[1])  # proteins untouched
    # off: no draw, so the other augmentations' random stream is what it was before the option existed
    aug = dict(thinning=0.5, feature_dropout=0.3)
    assert torch.equal(model_inputs(batch, t, Augmentation(**aug, gene_shift=0.0), torch.Generator().manual_seed(4))[0],
                       model_inputs(batch, t, Augmentation(**aug), torch.Generator().manual_seed(4))[0])
    assert not Augmentation().active
    assert Augmentation(gene_shift=0.1).active


def test_grouped_order_draws_every_batch_within_one_group():
    groups = np.array([0] * 70 + [1] * 45 + [2] * 10)
    order = grouped_order(groups, 16, seed=0, epoch=3)
    assert order.size == (70 // 16 + 45 // 16) * 16  # group 2 is smaller than a batch
    for b in order.reshape(-1, 16):
        assert np.unique(groups[b]).size == 1
    assert np.array_equal(order, grouped_order(groups, 16, seed=0, epoch=3))
    assert not np.array_equal(order, grouped_order(groups, 16, seed=0, epoch=4))
    assert np.unique(order).size == order.size


def test_fit_with_unmeasured_proteins_uses_measured_cells_only():
    d = make_synthetic(n_cells=200, n_genes=50, n_proteins=5, seed=0)
    prot = d.prot.copy()
    prot[:100, 4] = np.nan
    state = fit_preprocessing(d.rna, prot, d.gene_names, d.protein_names, **PLAIN, panels=[d.protein_names[:4],
                                                                                          d.protein_names])
    lp = np.log1p(d.prot[100:].astype(np.float64))
    own = lp[:, 4] - lp.mean(1)
    assert state.prot_mean[4] == pytest.approx(own.mean(), rel=1e-4)
    assert np.isfinite(state.depth).all()
    # a query with the first panel only is within the limit against that panel (not against the union)
    _, present, report = align_proteins(d.prot[:, :4], d.protein_names[:4], state)
    assert report.n_missing == 1
    assert report.missing_fraction == 0.0  # a training panel, complete: the heads need not down-weight it
    assert present.tolist() == [True] * 4 + [False]
    _, _, part = align_proteins(d.prot[:, :3], d.protein_names[:3], state)
    assert part.missing_fraction == pytest.approx(0.25)  # 1 of the closest panel's 4


def test_library_genes_restrict_the_model_and_its_library_sizes():
    d = make_synthetic(n_cells=150, n_genes=60, n_proteins=4, seed=0)
    shared = d.gene_names[10:]
    state = fit_preprocessing(d.rna, d.prot, d.gene_names, d.protein_names, **PLAIN, library_genes=shared)
    assert set(state.genes) <= set(shared)
    assert state.library_genes == shared
    _, lib_full, _ = align_rna(d.rna, d.gene_names, state)  # the reference, with every gene
    _, lib_cut, _ = align_rna(d.rna[:, 10:], shared, state)  # a query that has the shared genes only
    assert np.allclose(lib_full, lib_cut)
    assert np.allclose(lib_cut, np.asarray(d.rna[:, 10:].sum(1)).ravel())


def test_refusal_of_a_query_missing_genes_says_how_to_train_a_model_that_fits():
    d = make_synthetic(n_cells=100, n_genes=60, n_proteins=4, seed=0)
    state = fit_preprocessing(d.rna, d.prot, d.gene_names, d.protein_names, **PLAIN)
    with pytest.raises(InputError, match="--genes-from") as err:
        align_rna(d.rna[:, :20], d.gene_names[:20], state)
    assert "\n" not in str(err.value)


def test_pooled_reference_trains_and_scores_each_dataset(tmp_path):
    from omicsclip.evaluation.evaluate import evaluate

    d = make_synthetic(n_cells=600, n_genes=80, n_proteins=10, n_types=4, seed=5)
    a, b = d.subset(np.arange(300)), d.subset(np.arange(300, 600))
    a.prot, a.proteins = a.prot[:, :7], a.proteins.iloc[:7]
    b.prot, b.proteins = b.prot[:, 3:], b.proteins.iloc[3:]
    b.rna, b.genes = b.rna[:, 5:], b.genes.iloc[5:]
    stores = [write_store(a, tmp_path / "a.zarr"), write_store(b, tmp_path / "b.zarr")]
    query = write_store(b, tmp_path / "query.zarr")
    cfg = load_config(None, [*TINY, "train.batch_key=dataset", "train.prot_feature_dropout=0.2",
                             "train.gene_masking=0.1", "train.gene_shift=0.5", "model.rna_hidden=[128]",
                             "model.rna_hidden_pooled=[24]", "model.prot_hidden_pooled=[12]"])
    out = tmp_path / "model"
    store = prepare_training_store(stores, out, cfg, genes_from=[query])
    assert store == tmp_path / "model.pool.zarr"
    assert cfg["preprocess"]["genes"] == list(b.gene_names)
    train_model(store, out, cfg)
    model = load_model(out)
    assert model.state.panels == [list(a.protein_names), list(b.protein_names)]
    # a pooled store trains the RNA encoder with model.rna_hidden_pooled, and the saved model says so
    assert model.meta["config"]["model"]["rna_hidden"] == [24]
    assert model.model.rna.body[0].n_out == 24
    # TINY set model.prot_hidden=[16]: widths the user set win over model.prot_hidden_pooled
    assert model.meta["config"]["model"]["prot_hidden"] == [16]
    assert model.model.prot.body[0].n_out == 16
    assert model.state.library_genes == list(b.gene_names)
    emb = model.embed(rna=b.rna, prot=b.prot, genes=b.gene_names, proteins=b.protein_names)
    assert np.isfinite(emb["prot"]).all()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log  # it trained
    with pytest.raises(InputError, match="--dataset"):
        evaluate(store, out, fewlabel_fraction=0.1, n_pcs=5, label_key="cell_type", impute_k=5,
                 impute_temperature=0.05, impute_from="same")
    res = evaluate(store, out, fewlabel_fraction=0.1, n_pcs=5, label_key="cell_type", impute_k=5,
                   impute_temperature=0.05, impute_from="same", dataset="b")
    assert res["dataset"] == "b"
    assert set(res["protein_pearson_per_protein"]["omicsclip"]) == set(b.protein_names)
    assert 0.0 <= res["methods"]["omicsclip"]["foscttm"] < 0.5
    # reusing the pooled store of the same sources (a second call, e.g. --resume)
    assert prepare_training_store(stores, out, cfg) == store
    # a source written again with other names (e.g. other protein aliases) is never met by the stale pool
    a.proteins = a.proteins.rename(index={a.protein_names[0]: "renamed"})
    write_store(a, tmp_path / "a.zarr", overwrite=True)
    with pytest.raises(InputError, match="pooled from other stores, or other versions of them; pass --overwrite"):
        prepare_training_store(stores, out, cfg)
    assert prepare_training_store(stores, out, cfg, overwrite=True) == store
    assert "renamed" in store_info(store)["proteins"].index
    # a pool written by an omicsclip that recorded only paths and cell counts is reused on those, with a warning
    import zarr
    from anndata.io import write_elem

    root = zarr.open_group(str(store), mode="r+")
    legacy = [{k: src[k] for k in ("name", "path", "n_cells", "n_genes", "n_proteins")}
              for src in json.loads(str(root["uns/pooled_from_json"][()]))]
    write_elem(root["uns"], "pooled_from_json", json.dumps(legacy))
    zarr.consolidate_metadata(str(store))
    assert prepare_training_store(stores, out, cfg) == store


def test_rna_hidden_pooled_applies_to_pooled_stores_only():
    from omicsclip.train.run import _resolve_pooled_width

    cfg = load_config(None, ["model.rna_hidden=[128]", "model.rna_hidden_pooled=[256]"])
    pooled, plain = {"uns": {"panels": {"a": ["P1"], "b": ["P1", "P2"]}}}, {"uns": {}}
    assert _resolve_pooled_width(cfg, pooled)["model"]["rna_hidden"] == [256]
    assert _resolve_pooled_width(cfg, plain)["model"]["rna_hidden"] == [128]
    assert cfg["model"]["rna_hidden"] == [128]  # the caller's config is not changed
    off = load_config(None, ["model.rna_hidden=[128]", "model.rna_hidden_pooled=[]"])
    assert _resolve_pooled_width(off, pooled)["model"]["rna_hidden"] == [128]
    own = load_config(None, ["model.rna_hidden=[64, 32]"])  # widths the user set win over the pooled default
    assert _resolve_pooled_width(own, pooled)["model"]["rna_hidden"] == [64, 32]


def test_prot_hidden_pooled_applies_to_pooled_stores_only():
    from omicsclip.train.run import _resolve_pooled_width

    cfg = load_config(None, ["model.prot_hidden=[64]", "model.prot_hidden_pooled=[128]"])
    pooled, plain = {"uns": {"panels": {"a": ["P1"], "b": ["P1", "P2"]}}}, {"uns": {}}
    assert _resolve_pooled_width(cfg, pooled)["model"]["prot_hidden"] == [128]
    assert _resolve_pooled_width(cfg, plain)["model"]["prot_hidden"] == [64]
    off = load_config(None, ["model.prot_hidden_pooled=[]"])
    assert _resolve_pooled_width(off, pooled)["model"]["prot_hidden"] == [64]
    both = _resolve_pooled_width(load_config(None, ["model.prot_hidden=[32]"]), pooled)["model"]
    assert both["prot_hidden"] == [32]  # the user's protein widths
    assert both["rna_hidden"] == [256]  # and the pooled RNA widths


def test_batch_key_auto_groups_pooled_stores_by_dataset_only():
    import pandas as pd

    from omicsclip.train.groups import batch_groups as _batch_groups

    obs = pd.DataFrame({"dataset": ["a"] * 70 + ["b"] * 50, "batch": ["x", "y"] * 60},
                       index=[f"c{i}" for i in range(120)])
    rows = np.arange(120)
    pooled = {"obs": obs, "uns": {"panels": {"a": ["P1"], "b": ["P1", "P2"]}}}
    plain = {"obs": obs, "uns": {}}
    train = {"batch_key": "auto", "batch_size": 32}
    assert np.array_equal(_batch_groups(pooled, rows, train), (obs["dataset"] == "b").to_numpy().astype(int))
    assert _batch_groups(plain, rows, train) is None
    assert _batch_groups(plain, rows, {**train, "batch_key": "batch"}) is not None
    assert _batch_groups(pooled, rows, {**train, "batch_key": ""}) is None
    with pytest.raises(InputError, match="no such obs column"):
        _batch_groups(plain, rows, {**train, "batch_key": "donor"})
    with pytest.raises(InputError, match="every group"):
        _batch_groups(pooled, rows, {**train, "batch_size": 100})


def test_val_within_groups_validation_cells_by_dataset_or_batch_key(caplog):
    import pandas as pd

    from omicsclip.train.groups import validation_groups

    obs = pd.DataFrame({"dataset": ["a"] * 7 + ["b"] * 5, "batch": ["x", "y"] * 6},
                       index=[f"c{i}" for i in range(12)])
    rows = np.array([0, 2, 3, 8, 9, 11])
    pooled = {"obs": obs, "uns": {"panels": {"a": ["P1"], "b": ["P1", "P2"]}}}
    plain = {"obs": obs, "uns": {}}
    cpu = torch.device("cpu")
    train = {"batch_key": "auto", "val_within": "auto", "monitor": "foscttm"}

    def positions(groups):
        return {k: v.tolist() for k, v in groups.items()}

    assert positions(validation_groups(pooled, rows, train, cpu)) == {"a": [0, 1, 2], "b": [3, 4, 5]}
    # auto: by dataset on a pooled store whatever the batches do, so batch settings compare under one score
    assert positions(validation_groups(pooled, rows, {**train, "batch_key": ""}, cpu)) == {"a": [0, 1, 2],
                                                                                           "b": [3, 4, 5]}
    assert validation_groups(pooled, rows, {**train, "val_within": False}, cpu) is None
    assert validation_groups(plain, rows, train, cpu) is None  # one lab: all cells together
    assert validation_groups(plain, rows, {**train, "batch_key": "batch"}, cpu) is None
    # true: within the batch_key column when one is set
    by_batch = validation_groups(plain, rows, {**train, "batch_key": "batch", "val_within": True}, cpu)
    assert positions(by_batch) == {"x": [0, 1, 3], "y": [2, 4, 5]}
    with pytest.raises(InputError, match="val_within=true needs groups"):
        validation_groups(plain, rows, {**train, "val_within": True}, cpu)
    with pytest.raises(InputError, match="no such obs column"):
        validation_groups(plain, rows, {**train, "batch_key": "donor", "val_within": True}, cpu)
    # recall@10 within groups of at most 10 cells is 1 whatever the model: refused as the monitor
    with pytest.raises(InputError, match="recall@10 within each is 1"):
        validation_groups(pooled, rows, {**train, "monitor": "recall_at_10"}, cpu)
    # a group with one validation cell is left out of the score, by name
    with caplog.at_level("WARNING", logger="omicsclip.train.groups"):
        assert positions(validation_groups(pooled, np.array([0, 2, 8]), train, cpu)) == {"a": [0, 1], "b": [2]}
    assert "left out of the validation score: b" in caplog.text
    # one validation cell per group: nothing to rank within; auto ranks among all cells (warned), true refuses
    assert validation_groups(pooled, np.array([0, 8]), train, cpu) is None
    with pytest.raises(InputError, match="no dataset has two validation cells"):
        validation_groups(pooled, np.array([0, 8]), {**train, "val_within": True}, cpu)


def test_pooled_training_logs_each_datasets_validation_foscttm(tmp_path, monkeypatch):
    """The grouped score, on a sample of the validation cells (VAL_MAX_CELLS), is each dataset's own FOSCTTM."""
    from conftest import pooled_two_labs

    from omicsclip.evaluation.selection import read_train_log
    from omicsclip.model.embed import iter_store_embeddings
    from omicsclip.train import run as run_mod
    from omicsclip.train.validation import retrieval_scores

    store, _, _ = pooled_two_labs(tmp_path, n=300)
    monkeypatch.setattr(run_mod, "VAL_MAX_CELLS", 40)  # 60 validation cells: the sampled path
    cfg = load_config(None, ["train.epochs=2", "train.batch_size=64", "model.members=1", "train.device=cpu"])
    model_dir = train_model(store, tmp_path / "m", cfg)
    log = read_train_log(model_dir / "train_log.jsonl")
    assert all(set(r["val_foscttm_by_group"]) == {"labA", "labB"} for r in log)
    best = max(r["epoch"] for r in log if r["best"])  # the saved weights
    info = store_info(store)
    model = load_model(model_dir)
    split = model.split.reindex(info["obs"].index.astype(str)).to_numpy()
    rows = run_mod._validation_rows(np.flatnonzero(split == "val"), cfg["train"]["seed"])
    assert rows.size == 40
    (_, emb, _, _), = iter_store_embeddings(model, store, info)  # the store's cells as embed sees them
    labs = info["obs"]["dataset"].astype(str).to_numpy()
    for lab in ("labA", "labB"):
        sel = rows[labs[rows] == lab]
        _, fos = retrieval_scores(torch.tensor(emb["rna"][sel]), torch.tensor(emb["prot"][sel]))
        assert log[best - 1]["val_foscttm_by_group"][lab] == pytest.approx(fos, abs=1e-6)
