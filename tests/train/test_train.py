"""Training: split, schedule, data pipeline, validation metrics, early stopping, an end-to-end CPU run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import TINY, tiny_store

from omicsclip.config import default_config, load_config
from omicsclip.errors import InputError
from omicsclip.io.hashing import sha256_file
from omicsclip.io.split import make_split, read_split, write_split
from omicsclip.model.batchops import Augmentation, model_inputs, thin_counts
from omicsclip.model.modelio import load_model
from omicsclip.model.preprocess import TorchPreprocessor, fit_preprocessing
from omicsclip.train.data import DeviceBatches, DeviceCells, StoreBatches
from omicsclip.train.run import train_model
from omicsclip.train.trainer import TrainSettings, WarmupCosine
from omicsclip.train.validation import EarlyStopping, retrieval_scores

# the config's preprocess section with the plain model input (the scaled genes: no PCs, protein genes or depth)
PLAIN = {**{k: v for k, v in default_config()["preprocess"].items() if k != "genes"}, "n_pcs": 0, "protein_genes": 0, "depth_features": False}


def fit(rna, prot, genes, proteins, **kw):
    """``fit_preprocessing`` with :data:`PLAIN` settings, ``kw`` overriding them."""
    return fit_preprocessing(rna, prot, genes, proteins, **{**PLAIN, **kw})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("store") / "cells.zarr")


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    train_model(store, out, load_config(None, TINY))
    return out


# ------------------------------------------------------------------------------------------------ split
def test_split_is_stratified_seeded_and_complete():
    obs = pd.DataFrame({"cell_type": ["a"] * 500 + ["b"] * 300 + ["c"] * 200},
                       index=[f"c{i}" for i in range(1000)])
    s1 = make_split(obs, test_fraction=0.2, val_fraction=0.1, seed=3)
    s2 = make_split(obs, test_fraction=0.2, val_fraction=0.1, seed=3)
    s3 = make_split(obs, test_fraction=0.2, val_fraction=0.1, seed=4)
    assert s1.equals(s2)
    assert not s1.equals(s3)
    assert list(s1.index) == list(obs.index)
    for label, n in (("a", 500), ("b", 300), ("c", 200)):
        counts = s1[obs["cell_type"] == label].value_counts()
        assert counts["test"] == round(0.2 * n)
        assert counts["val"] == round(0.1 * n)


def test_split_tiny_strata_keep_training_cells_and_unstratified_fallback():
    obs = pd.DataFrame({"cell_type": ["rare"] + ["x"] * 99}, index=[f"c{i}" for i in range(100)])
    s = make_split(obs, seed=0)
    assert s.iloc[0] == "train"
    s_no = make_split(obs.drop(columns="cell_type"), seed=0, stratify="cell_type")
    assert (s_no == "test").sum() == 20
    with pytest.raises(InputError):
        make_split(obs, test_fraction=0.6, val_fraction=0.5)


def test_split_roundtrip(tmp_path):
    obs = pd.DataFrame(index=[f"AAAC-{i}" for i in range(50)])
    s = make_split(obs, stratify="")
    write_split(s, tmp_path / "split.tsv")
    assert read_split(tmp_path / "split.tsv").equals(s)


# ------------------------------------------------------------------------------------------------ pieces
def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup=10, total=110)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)


def _brute(a, b, k=10):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = a @ b.T
    out_r, out_f = [], []
    for m in (s, s.T):
        d = np.diag(m)[:, None]
        closer, ties = (m > d).sum(1), (m == d).sum(1) - 1
        out_r.append(np.mean(closer + ties < k))
        out_f.append(np.mean((closer + 0.5 * ties) / (len(m) - 1)))
    return np.mean(out_r), np.mean(out_f)


def test_retrieval_scores_match_brute_force():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(150, 5))
    b = a + rng.normal(scale=0.8, size=a.shape)
    r, f = retrieval_scores(torch.tensor(a), torch.tensor(b), k=10, chunk=37)
    rr, ff = _brute(a, b)
    assert r == pytest.approx(rr)
    assert f == pytest.approx(ff)
    r, f = retrieval_scores(torch.tensor(a), torch.tensor(a))
    assert r == 1.0
    assert f == 0.0


def test_early_stopping_tracks_best_weights():
    m = torch.nn.Linear(2, 2)
    es = EarlyStopping(patience=2, monitor="foscttm")
    assert es.update(0.1, 0.30, 1, m)
    with torch.no_grad():
        m.weight.add_(1.0)
    assert not es.update(0.2, 0.31, 2, m)
    assert not es.should_stop
    assert not es.update(0.2, 0.35, 3, m)
    assert es.should_stop
    assert es.best_epoch == 1
    assert not torch.equal(es.best_state["weight"], m.weight)
    es2 = EarlyStopping(patience=2, monitor="recall_at_10")
    es2.update(0.1, 0.3, 1, m)
    assert es2.update(0.2, 0.9, 2, m)  # higher recall is better even if FOSCTTM is worse
    with pytest.raises(InputError):
        EarlyStopping(1, "loss")


def _cells(n=40, g=12, p=3, seed=0):
    rng = np.random.default_rng(seed)
    rna = sp.csr_matrix(rng.poisson(1.0, (n, g)).astype(np.float32))
    prot = rng.poisson(30, (n, p)).astype(np.float32)
    lib = np.asarray(rna.sum(1)).ravel() + rng.integers(0, 50, n)
    return rna, lib, prot


def test_device_cells_gather_is_an_index_gather():
    rna, lib, prot = _cells()
    cells = DeviceCells(rna, lib, prot, "cpu")
    idx = torch.tensor([5, 0, 39, 5])
    b = cells.gather(idx)
    dense = torch.zeros(4, rna.shape[1])
    dense[b.row, b.col] = b.val.float()
    np.testing.assert_array_equal(dense.numpy(), rna[idx.numpy()].toarray())
    np.testing.assert_allclose(b.other.numpy() + dense.sum(1).numpy(), lib[idx.numpy()])
    np.testing.assert_array_equal(b.prot.numpy(), prot[idx.numpy()])


def test_model_inputs_without_augmentation_equal_preprocessing():
    rna, lib, prot = _cells()
    state = fit(rna, prot, [f"g{i}" for i in range(12)], ["a", "b", "c"], n_hvg=0)
    pre = TorchPreprocessor(state)
    x, y = model_inputs(DeviceCells(rna, lib, prot, "cpu").gather(torch.arange(40)), pre)
    torch.testing.assert_close(x, pre.rna(torch.as_tensor(rna.toarray()), torch.as_tensor(lib, dtype=torch.float32)))
    torch.testing.assert_close(y, pre.prot(torch.as_tensor(prot)))


def test_binomial_thinning_statistics():
    g = torch.Generator().manual_seed(0)
    c = torch.full((20000,), 10.0)
    t = thin_counts(c, torch.tensor(0.3), g)
    assert torch.all(t <= c)
    assert torch.all(t == t.round())
    assert t.mean().item() == pytest.approx(3.0, abs=0.05)
    assert t.var().item() == pytest.approx(10 * 0.3 * 0.7, rel=0.05)
    assert torch.equal(thin_counts(c, torch.tensor(1.0), g), c)


def test_augmentation_is_seeded_and_changes_inputs():
    rna, lib, prot = _cells()
    state = fit(rna, prot, [f"g{i}" for i in range(12)], ["a", "b", "c"], n_hvg=0)
    pre = TorchPreprocessor(state)
    batch = DeviceCells(rna, lib, prot, "cpu").gather(torch.arange(40))
    aug = Augmentation(thinning=0.5, feature_dropout=0.2)
    x1, y1 = model_inputs(batch, pre, aug, torch.Generator().manual_seed(1))
    x2, y2 = model_inputs(batch, pre, aug, torch.Generator().manual_seed(1))
    x0, _ = model_inputs(batch, pre)
    assert torch.equal(x1, x2)
    assert torch.equal(y1, y2)
    assert not torch.equal(x1, x0)
    assert 0.1 < (x1 == 0).float().mean().item() < 0.4


def test_device_batches_cover_each_cell_once_per_epoch():
    rna, lib, prot = _cells(n=50)
    src = DeviceBatches(DeviceCells(rna, lib, prot, "cpu"), batch_size=16, seed=0)
    assert src.steps_per_epoch == 3
    seen = [b.prot for b in src.epoch(0)]
    rows = {tuple(r.tolist()) for b in seen for r in b}
    assert len(rows) == 48  # 3 full batches, remainder dropped
    resumed = [b.prot for b in src.epoch(0, start_step=2)]
    assert torch.equal(resumed[0], seen[2])


def test_store_batches_stream_the_training_cells(store):
    from omicsclip.io.store import read_store

    d = read_store(store)
    rows = np.arange(0, d.n_cells, 2)
    state = fit(d.rna[rows], d.prot[rows], d.gene_names, d.protein_names, n_hvg=0)
    src = StoreBatches(store, rows, state, batch_size=32, seed=0, device="cpu", chunk_cells=50)
    batches = list(src.epoch(0))
    assert len(batches) == src.steps_per_epoch == len(rows) // 32
    got = torch.cat([b.prot for b in batches]).numpy()
    want = {tuple(r) for r in d.prot[rows]}
    assert all(tuple(r) in want for r in got)
    assert len({tuple(r) for r in got}) == len(got)
    later = list(src.epoch(0, start_step=2))
    assert torch.equal(later[0].prot, batches[2].prot)
    assert not torch.equal(list(src.epoch(1))[0].prot, batches[0].prot)


# ------------------------------------------------------------------------------------------------ end to end
def test_train_writes_model_folder(trained, store):
    files = {p.name for p in trained.iterdir()}
    assert {"model.safetensors", "model.json", "split.tsv", "train_log.jsonl", "checkpoints"} <= files
    assert not trained.with_name("m.partial").exists()
    meta = json.loads((trained / "model.json").read_text())
    assert meta["model_fingerprint"] == sha256_file(trained / "model.safetensors")
    assert len(meta["data_fingerprint"]) == 64
    assert meta["preprocessing"]["genes"]
    assert meta["config"]["model"]["embed_dim"] == 8
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    for key in ("epoch", "step", "train_loss", "val_recall_at_10", "val_foscttm", "temperature", "lr", "seconds"):
        assert key in log[0]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    model = load_model(trained)
    split = model.split
    assert set(split) == {"train", "val", "test"}
    assert len(split) == 300
    assert meta["n_cells"]["test"] == int((split == "test").sum())


def test_training_is_repeatable_and_refuses_existing_output(trained, store, tmp_path):
    out = tmp_path / "again"
    train_model(store, out, load_config(None, TINY))
    assert sha256_file(out / "model.safetensors") == sha256_file(trained / "model.safetensors")
    with pytest.raises(InputError, match="already exists"):
        train_model(store, out, load_config(None, TINY))
    train_model(store, out, load_config(None, TINY + ["train.seed=1"]), overwrite=True)
    assert sha256_file(out / "model.safetensors") != sha256_file(trained / "model.safetensors")


def test_training_learns_cross_modal_matching(store, tmp_path):
    out = tmp_path / "m"
    train_model(store, out, load_config(None, TINY + ["train.epochs=25", "train.lr=0.003", "train.batch_size=128"]))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    best = min(r["val_foscttm"] for r in log)
    assert best < 0.2  # random matching is 0.5


def test_streamed_chunked_bf16_variants_run(store, tmp_path):
    cfg = load_config(None, TINY + ["train.epochs=2", "train.data_on_device=false", "train.logit_chunk_size=16",
                                    "train.precision=bf16", "train.learnable_temperature=true"])
    out = train_model(store, tmp_path / "m", cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    assert all(math.isfinite(r["train_loss"]) for r in log)
    assert load_model(out).meta["training"]["bf16"] is True


def test_chunked_logits_train_like_plain(store, tmp_path):
    base = TINY + ["train.epochs=1", "train.thinning=1.0", "train.feature_dropout=0.0", "preprocess.n_pcs=0"]
    a = train_model(store, tmp_path / "a", load_config(None, base))
    b = train_model(store, tmp_path / "b", load_config(None, base + ["train.logit_chunk_size=7"]))
    la = json.loads((a / "train_log.jsonl").read_text())
    lb = json.loads((b / "train_log.jsonl").read_text())
    assert la["train_loss"] == pytest.approx(lb["train_loss"], rel=1e-4)


def test_bad_config_is_an_input_error(store, tmp_path):
    with pytest.raises(InputError, match="temperature"):
        train_model(store, tmp_path / "m", load_config(None, TINY + ["train.temperature=5.0"]))
    with pytest.raises(InputError, match="batch_size"):
        train_model(store, tmp_path / "m2", load_config(None, TINY + ["train.batch_size=100000"]))
    with pytest.raises(InputError, match="not found"):
        train_model(tmp_path / "nope.zarr", tmp_path / "m3", load_config(None, TINY))


def test_sparse_projection_path_equals_dense():
    from omicsclip.model.batchops import gather_rows  # noqa: F401  (the path model_inputs takes with a projection)

    rna, lib, prot = _cells(n=30, g=12)
    state = fit(rna, prot, [f"g{i}" for i in range(12)], ["a", "b", "c"], n_hvg=0, n_pcs=4)
    pre = TorchPreprocessor(state)
    batch = DeviceCells(rna, lib, prot, "cpu").gather(torch.arange(30))
    x, _ = model_inputs(batch, pre)  # sparse path
    dense = pre.rna(torch.as_tensor(rna.toarray()), torch.as_tensor(lib, dtype=torch.float32))
    torch.testing.assert_close(x, dense, atol=1e-4, rtol=1e-4)
    keep = torch.rand(30, 12, generator=torch.Generator().manual_seed(0)) > 0.3
    v = batch.val.float()
    lib_t = torch.zeros(30).index_add_(0, batch.row, v) + batch.other.float()
    got = pre.rna_sparse(batch.row, batch.col, v, lib_t, 30, keep)
    torch.testing.assert_close(got, pre.rna(torch.as_tensor(rna.toarray()), lib_t, keep), atol=1e-4, rtol=1e-4)


def test_ema_weights_are_the_ones_kept(store, tmp_path):
    from safetensors.torch import load_file

    base = TINY + ["train.epochs=2", "train.eval_every=2"]
    plain = train_model(store, tmp_path / "plain", load_config(None, base))
    ema = train_model(store, tmp_path / "ema", load_config(None, base + ["train.ema_decay=0.9"]))
    w0, w1 = load_file(str(plain / "model.safetensors")), load_file(str(ema / "model.safetensors"))
    assert w0.keys() == w1.keys()
    assert not all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all(torch.isfinite(v).all() for v in w1.values())


def test_logit_chunk_auto():
    from omicsclip.train.trainer import logit_chunk

    assert logit_chunk(0, 512) == 0
    assert logit_chunk(0, 65_536) == 8_192
    assert logit_chunk(100, 512) == 100


def test_min_steps_extends_training_of_small_data(store, tmp_path):
    """300 cells, 70% training, batch 64: 3 steps per epoch, so 10 steps need 4 epochs where 1 was asked."""
    out = train_model(store, tmp_path / "m", load_config(None, TINY + ["train.epochs=1", "train.min_steps=10",
                                                                       "train.patience=100"]))
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    steps_per_epoch = log[0]["step"]
    assert len(log) == math.ceil(10 / steps_per_epoch)
    assert log[-1]["step"] >= 10


def test_max_steps_stops_part_way_through_an_epoch(store, tmp_path):
    """train.max_steps=5 with 3 steps per epoch: 2 epochs, the second cut after its 2nd step, the LR at 0."""
    out = train_model(store, tmp_path / "m", load_config(None, TINY + ["train.epochs=50", "train.max_steps=5",
                                                                       "train.patience=100"]))
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in log] == [3, 5]
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule ends at max_steps
    assert json.loads((out / "model.json").read_text())["training"]["steps"] == 5


def test_train_settings_come_from_the_config_only():
    """TrainSettings has no defaults of its own: every field is the train section's value (or bf16)."""
    train = default_config()["train"]
    s = TrainSettings.from_config(train, bf16=False)
    assert all(getattr(s, k) == train[k] for k in s.__dataclass_fields__ if k != "bf16")
    with pytest.raises(TypeError):
        TrainSettings()  # no fallback values
    with pytest.raises(KeyError):
        TrainSettings.from_config({k: v for k, v in train.items() if k != "lr"}, bf16=False)


def test_grouped_retrieval_scores_rank_partners_within_their_group():
    from omicsclip.train.validation import grouped_retrieval_scores

    rng = np.random.default_rng(1)
    a = rng.normal(size=(90, 6))
    a[60:] = a[:30] + 0.01 * rng.normal(size=(30, 6))  # group "y": each cell has a near twin in group "x",
    b = a + rng.normal(scale=0.3, size=a.shape)
    b[:30] = a[:30]  # whose partner sits closer to it than its own partner does
    groups = {"x": torch.arange(60), "y": torch.arange(60, 90), "lone": torch.tensor([0])}
    r, f, per = grouped_retrieval_scores(torch.tensor(a), torch.tensor(b), groups, k=10)
    rx, fx = _brute(a[:60], b[:60])
    ry, fy = _brute(a[60:], b[60:])
    assert per == pytest.approx({"x": fx, "y": fy})  # a one-cell group is not scored
    assert f == pytest.approx((60 * fx + 30 * fy) / 90)
    assert r == pytest.approx((60 * rx + 30 * ry) / 90)
    r_all, f_all = retrieval_scores(torch.tensor(a), torch.tensor(b), k=10)
    assert f < f_all  # ranked among all cells, group y's partners lose to their twins in group x
    assert grouped_retrieval_scores(torch.tensor(a), torch.tensor(b), None) == (r_all, f_all, {})
