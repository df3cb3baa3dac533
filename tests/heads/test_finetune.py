"""Training heads on synthetic embeddings where the answer is known; missing modalities; save/load; files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from omicsclip.errors import InputError
from omicsclip.evaluation.fewlabel import corrupt
from omicsclip.heads.finetune import (
    HeadParams,
    check_fingerprint,
    finetune_embedding,
    fit_head,
    label_array,
    load_head,
    predict_head,
    read_embedding,
    sample_per_class,
    save_head,
)

D = 16
FAST = {"epochs": 80}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _cone(k: int, rng: np.random.Generator) -> np.ndarray:
    """Class centroids inside a cone, like contrastive embeddings (which do not fill the sphere)."""
    mean = _unit(rng.normal(size=(1, D)))
    return _unit(mean + 0.5 * _unit(rng.normal(size=(k, D))))


_G = np.random.default_rng(0)
RNA_C, PROT_C = _cone(4, _G), _cone(4, _G)


def factors(n: int, seed: int, noise: float = 0.15):
    """RNA shows factor a (2 levels), protein factor b: labels of (a, b) need both modalities."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    return (_unit(RNA_C[a] + noise * rng.normal(size=(n, D))), _unit(PROT_C[b] + noise * rng.normal(size=(n, D))),
            a, b)


def typed(n: int, seed: int, *, prot_noise: bool = False, noise: float = 0.12):
    """4 cell types seen by both modalities; ``prot_noise``: protein is pure noise (random unit vectors)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, n)
    zr = _unit(RNA_C[t] + noise * rng.normal(size=(n, D)))
    zp = _unit(rng.normal(size=(n, D))) if prot_noise else _unit(PROT_C[t] + noise * rng.normal(size=(n, D)))
    return zr, zp, t


def _acc(head, zr, zp, y, mask=None) -> float:
    return float((predict_head(head, zr, zp, mask=mask, mc_samples=5)["probs"].argmax(1) == y).mean())


# ------------------------------------------------------------------------------- fusions on known answers


@pytest.fixture(scope="module")
def joint():
    tr, te, pool = factors(120, 1), factors(600, 2), factors(400, 3)
    y_tr, y_te = 2 * tr[2] + tr[3], 2 * te[2] + te[3]
    single = {m: _acc(fit_head(tr[0], tr[1], y_tr, 4, HeadParams(fusion=m, **FAST)), te[0], te[1], y_te)
              for m in ("rna", "prot")}
    return tr, te, pool, y_tr, y_te, single


def test_single_modality_cannot_solve_joint_labels(joint):
    *_, single = joint
    assert max(single.values()) < 0.62  # each modality sees one factor: at most ~50% of the 4 classes


@pytest.mark.parametrize("fusion", ["early", "late", "gated", "uncertainty", "tensor"])
def test_every_fusion_combines_the_modalities(joint, fusion):
    tr, te, pool, y_tr, y_te, single = joint
    head = fit_head(tr[0], tr[1], y_tr, 4, HeadParams(fusion=fusion, **FAST), unlabelled=pool[:2])
    assert _acc(head, te[0], te[1], y_te) >= max(single.values()) + 0.15


@pytest.mark.parametrize(("fusion", "kind"), [("tensor", "linear"), ("early", "mlp")])
def test_interaction_heads_solve_xor(fusion, kind):
    """XOR of a factor per modality: only multiplicative (LMF) or non-linear early fusion can represent it."""
    tr, te = factors(120, 4), factors(600, 5)
    head = fit_head(tr[0], tr[1], tr[2] ^ tr[3], 2, HeadParams(fusion=fusion, head=kind, epochs=100))
    assert _acc(head, te[0], te[1], te[2] ^ te[3]) >= 0.9
    if fusion == "early":  # contrast: a linear early-fusion head cannot
        lin = fit_head(tr[0], tr[1], tr[2] ^ tr[3], 2, HeadParams(fusion="early", epochs=100))
        assert _acc(lin, te[0], te[1], te[2] ^ te[3]) < 0.7


@pytest.fixture(scope="module")
def noisy_protein():
    tr, te, pool = typed(80, 11, prot_noise=True), typed(600, 12, prot_noise=True), typed(300, 13, prot_noise=True)
    rna_only = _acc(fit_head(tr[0], tr[1], tr[2], 4, HeadParams(fusion="rna", **FAST)), te[0], te[1], te[2])
    return tr, te, pool, rna_only


@pytest.mark.parametrize("fusion", ["gated", "uncertainty"])
def test_pure_noise_modality_is_ignored(noisy_protein, fusion):
    """Protein is pure noise: gated and uncertainty heads match the RNA-only head (no negative transfer)."""
    tr, te, pool, rna_only = noisy_protein
    # the variance branch needs the default number of steps to learn that a whole modality is noise
    params = HeadParams(fusion=fusion, ensemble=3, epochs=300 if fusion == "uncertainty" else FAST["epochs"])
    head = fit_head(tr[0], tr[1], tr[2], 4, params, unlabelled=pool[:2])
    pred = predict_head(head, te[0], te[1], mc_samples=5)
    assert (pred["probs"].argmax(1) == te[2]).mean() >= rna_only - 0.025
    assert pred["weights"][:, 0].mean() > 0.6  # more weight on RNA


@pytest.fixture(scope="module")
def typed_heads():
    """Every fusion trained once on clean 4-type data (80 labelled cells + 300 unlabelled)."""
    tr, te, pool = typed(80, 21), typed(500, 22), typed(300, 23)
    heads = {f: fit_head(tr[0], tr[1], tr[2], 4, HeadParams(fusion=f, epochs=150, ensemble=3), unlabelled=pool[:2])
             for f in ("early", "late", "gated", "uncertainty", "tensor")}
    return heads, te


def test_corrupted_modality_is_down_weighted(typed_heads):
    """Half of the test cells get one modality replaced by a random unit vector after clean training."""
    heads, te = typed_heads
    zr, zp, hit = corrupt(te[0], te[1], "noise", np.random.default_rng(0))
    drops = {}
    for fusion in ("gated", "uncertainty", "early"):
        head = heads[fusion]
        clean = _acc(head, te[0], te[1], te[2])
        pred = predict_head(head, zr, zp, mc_samples=5)
        drops[fusion] = clean - float((pred["probs"].argmax(1) == te[2]).mean())
        if fusion != "early":
            w_bad = np.concatenate([pred["weights"][hit[:, 0], 0], pred["weights"][hit[:, 1], 1]])
            assert np.median(w_bad) < 0.2, fusion
    assert drops["gated"] <= 0.03 and drops["uncertainty"] <= 0.03, drops
    assert drops["early"] > max(drops["gated"], drops["uncertainty"]), drops


# ------------------------------------------------------------------------------- missing modality


@pytest.mark.parametrize("fusion", ["early", "late", "gated", "uncertainty", "tensor"])
def test_predicts_from_either_modality_alone(typed_heads, fusion):
    heads, te = typed_heads
    head = heads[fusion]
    n = len(te[2])
    rna_only = np.tile(np.array([[1, 0]], np.float32), (n, 1))
    prot_only = rna_only[:, ::-1].copy()
    zp_missing = np.full_like(te[1], np.nan)  # a missing modality may hold NaN: it is masked, never read
    for mask, zr, zp in ((rna_only, te[0], zp_missing), (prot_only, np.full_like(te[0], np.nan), te[1])):
        pred = predict_head(head, zr, zp, mask=mask, mc_samples=5)
        assert np.isfinite(pred["probs"]).all()
        assert (pred["probs"].argmax(1) == te[2]).mean() >= 0.9
        if fusion in ("late", "gated", "uncertainty"):
            present = mask.argmax(1)[0]
            assert np.allclose(pred["weights"][:, present], 1.0)
            assert np.isnan(pred["modality_uncertainty"][:, 1 - present]).all()
    # absent arrays (modality missing for every cell) are the same as masked rows
    a = predict_head(head, te[0], None, mc_samples=5)
    b = predict_head(head, te[0], zp_missing, mask=rna_only, mc_samples=5)
    assert np.allclose(a["probs"], b["probs"], atol=1e-6)


def test_single_modality_head_needs_its_modality():
    tr = typed(40, 41)
    with pytest.raises(InputError, match="none of the labelled cells"):
        fit_head(tr[0], tr[1], tr[2], 4, HeadParams(fusion="prot", epochs=5), mask=np.tile([[1.0, 0.0]], (40, 1)))


# ------------------------------------------------------------------------------- save / load / fingerprint


@pytest.mark.parametrize("fusion", ["early", "gated", "uncertainty", "tensor", "rna"])
def test_save_load_round_trip(tmp_path, fusion):
    tr, te = typed(40, 51), typed(50, 52)
    params = HeadParams(fusion=fusion, head="mlp", hidden=8, epochs=10, ensemble=3)
    head = fit_head(tr[0], tr[1], tr[2], 4, params)
    meta = {"params": params.__dict__, "classes": list("abcd"), "model_fingerprint": "fp1"}
    save_head(tmp_path / "h", head, meta)
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head.json", "head.safetensors"]
    loaded, meta2, extra = load_head(tmp_path / "h")
    assert meta2["classes"] == list("abcd") and meta2["architecture"]["fusion"] == fusion and extra == {}
    a = predict_head(head, te[0], te[1], mc_samples=4, seed=3)
    b = predict_head(loaded, te[0], te[1], mc_samples=4, seed=3)
    for k in ("probs", "weights", "uncertainty"):
        assert np.allclose(a[k], b[k], equal_nan=True, atol=1e-6), k
    with pytest.raises(InputError, match="already exists"):
        save_head(tmp_path / "h", head, meta)


def test_load_head_refuses_bad_folders(tmp_path):
    with pytest.raises(InputError, match="not a head folder"):
        load_head(tmp_path)
    (tmp_path / "head.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "head.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="not an omicsclip head"):
        load_head(tmp_path)


def test_head_saved_before_calibration_loads_uncalibrated(tmp_path):
    from safetensors.torch import load_file, save_file

    tr = typed(40, 53)
    params = HeadParams(fusion="gated", hidden=8, epochs=5, ensemble=3)
    meta = {"params": params.__dict__, "classes": list("abcd"), "model_fingerprint": "fp1"}
    save_head(tmp_path / "h", fit_head(tr[0], tr[1], tr[2], 4, params), meta)
    w = tmp_path / "h" / "head.safetensors"
    tensors = load_file(str(w))
    del tensors["head.beta"]  # what an older omicsclip wrote
    save_file(tensors, str(w))
    loaded, _, _ = load_head(tmp_path / "h")
    assert float(loaded.beta) == 1.0


def test_fingerprint_must_match():
    check_fingerprint({"model_fingerprint": "abc"}, "abc", head_dir="h")
    with pytest.raises(InputError, match="trained on embeddings of model abc"):
        check_fingerprint({"model_fingerprint": "abc"}, "xyz", head_dir="h")
    with pytest.raises(InputError, match="no model_fingerprint"):
        check_fingerprint({}, "xyz", head_dir="h")


# ------------------------------------------------------------------------------- labels and embedding files


def test_labels_unlabelled_and_ignored():
    obs = pd.DataFrame({"ct": ["T", None, "", "unknown", "B", np.nan, " NK "]})
    assert list(label_array(obs, "ct")) == ["T", None, None, "unknown", "B", None, "NK"]
    assert list(label_array(obs, "ct", ["unknown"])) == ["T", None, None, None, "B", None, "NK"]
    with pytest.raises(InputError, match="no label column 'cell'"):
        label_array(obs, "cell", source="emb.zarr")


def test_sample_per_class_draws_training_cells_only():
    labels = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 2 + [None] * 3, dtype=object)
    train = np.ones(len(labels), bool)
    train[:5] = False
    idx = sample_per_class(labels, train, 3, np.random.default_rng(0))
    assert train[idx].all()
    assert sorted(pd.Series(labels[idx]).value_counts().items()) == [("a", 3), ("b", 3), ("c", 2)]  # c capped
    again = sample_per_class(labels, train, 3, np.random.default_rng(0))
    assert np.array_equal(idx, again)


def write_embedding(path, n: int = 300, seed: int = 0, fingerprint: str | None = "fp-test"):
    """A small `omicsclip embed`-like AnnData zarr: 4 types, obs split/cell_type (with unlabelled cells)."""
    import anndata as ad

    zr, zp, t = typed(n, seed)
    rng = np.random.default_rng(seed)
    labels = np.array(["T", "B", "NK", "Mono"], dtype=object)[t]
    labels[rng.random(n) < 0.1] = "unknown"
    labels[rng.random(n) < 0.05] = ""
    split = rng.choice(["train", "val", "test"], size=n, p=[0.6, 0.1, 0.3])
    a = ad.AnnData(obs=pd.DataFrame({"cell_type": labels, "split": split},
                                    index=[f"c{i}" for i in range(n)]))
    a.obsm["X_omicsclip_rna"], a.obsm["X_omicsclip_prot"] = zr, zp
    a.obsm["X_omicsclip_joint"] = _unit(zr + zp)
    if fingerprint:
        a.uns["omicsclip"] = {"model_fingerprint": fingerprint}
    a.write_zarr(path)
    return path


def test_finetune_embedding_end_to_end(tmp_path):
    emb = write_embedding(tmp_path / "emb.zarr")
    section = {"fusion": "late", "epochs": 40}
    meta = finetune_embedding(emb, tmp_path / "head", label_key="cell_type", section=section,
                              ignore_labels=["unknown"], labels_per_class=5)
    assert meta["classes"] == ["B", "Mono", "NK", "T"]  # "unknown" and "" are unlabelled
    assert meta["n_train_cells"] == 20 and set(meta["class_counts"].values()) == {5}
    assert meta["model_fingerprint"] == "fp-test"
    assert meta["metrics"]["split"] == "test" and meta["metrics"]["accuracy"] > 0.9
    assert 0 <= meta["metrics"]["ece"] <= 1
    e = read_embedding(emb)
    train_barcodes = set(e.obs.index[e.obs["split"] == "train"])
    assert meta["n_train_cells"] <= len(train_barcodes)
    with_unknown = finetune_embedding(emb, tmp_path / "head2", label_key="cell_type", section=section)
    assert "unknown" in with_unknown["classes"]  # only ignored when asked
    with pytest.raises(InputError, match="already exists"):
        finetune_embedding(emb, tmp_path / "head", label_key="cell_type", section=section)


def test_finetune_refuses_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        finetune_embedding(tmp_path / "nope.zarr", tmp_path / "h", label_key="cell_type")
    emb = write_embedding(tmp_path / "emb.zarr", n=60)
    with pytest.raises(InputError, match="no label column"):
        finetune_embedding(emb, tmp_path / "h", label_key="celltype")
    with pytest.raises(InputError, match="finetune.fusion"):
        finetune_embedding(emb, tmp_path / "h", label_key="cell_type", section={"fusion": "sum"})


def test_heads_are_seeded():
    tr = typed(40, 61)
    a = fit_head(tr[0], tr[1], tr[2], 4, HeadParams(fusion="gated", epochs=15, seed=1))
    b = fit_head(tr[0], tr[1], tr[2], 4, HeadParams(fusion="gated", epochs=15, seed=1))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


# ------------------------------------------------------------------------------- with a (tiny) real model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Synthetic counts -> store -> an (untrained, seeded) dual encoder saved like `omicsclip train` -> embed."""
    from omicsclip.config import load_config
    from omicsclip.io.split import make_split, write_split
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.embed import embed_store
    from omicsclip.model.encoders import build_model
    from omicsclip.model.modelio import write_model_files
    from omicsclip.model.preprocess import fit_preprocessing

    root = tmp_path_factory.mktemp("tiny_model")
    data = make_synthetic(n_cells=400, n_genes=150, n_proteins=8, n_types=4, seed=0)
    write_store(data, root / "store.zarr")
    split = make_split(data.obs, seed=0)
    tr = (split == "train").to_numpy()
    state = fit_preprocessing(data.rna[tr], data.prot[tr], data.gene_names, data.protein_names, n_hvg=100)
    cfg = load_config(None, ["model.rna_hidden=[32]", "model.prot_hidden=[16]", "model.embed_dim=16"])
    torch.manual_seed(0)
    model = build_model(len(state.genes), len(state.proteins), cfg["model"], cfg["train"])
    (root / "model").mkdir()
    fingerprint = write_model_files(root / "model", model, state, cfg, {})
    write_split(split, root / "model" / "split.tsv")
    embed_store(root / "store.zarr", root / "model", root / "emb.zarr")
    data.to_anndata().write_h5ad(root / "cells.h5ad")
    return root, fingerprint, data


COLUMNS = ["barcode", "label", "probability", "weight_rna", "weight_prot", "uncertainty", "uncertainty_rna",
           "uncertainty_prot", "has_rna", "has_prot"]


@pytest.mark.slow
def test_predict_new_cells_with_missing_modalities(tiny_model, tmp_path):
    import anndata as ad

    from omicsclip.heads.finetune import predict_cells

    root, fingerprint, data = tiny_model
    meta = finetune_embedding(root / "emb.zarr", tmp_path / "head", label_key="cell_type",
                              section={"fusion": "gated", "epochs": 60, "ensemble": 3})
    assert meta["model_fingerprint"] == fingerprint
    summary = predict_cells([root / "cells.h5ad"], root / "model", tmp_path / "head", tmp_path / "p.tsv")
    df = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert list(df.columns) == COLUMNS and len(df) == data.n_cells == summary["n_cells"]
    assert (df["label"].to_numpy() == data.obs["cell_type"].astype(str).to_numpy()).mean() > 0.8
    assert np.allclose(df["weight_rna"] + df["weight_prot"], 1.0, atol=1e-4)
    # RNA-only input, and cells whose protein counts are all zero: flagged and predicted from RNA alone
    a = data.to_anndata()
    rna_only = ad.AnnData(X=a.X, obs=a.obs[["cell_type"]].copy(), var=a.var.copy())
    rna_only.write_h5ad(tmp_path / "rna_only.h5ad")
    predict_cells([tmp_path / "rna_only.h5ad"], root / "model", tmp_path / "head", tmp_path / "r.tsv",
                  modality="rna")
    r = pd.read_csv(tmp_path / "r.tsv", sep="\t")
    assert (r["has_prot"] == 0).all() and (r["has_rna"] == 1).all()
    assert np.allclose(r["weight_rna"], 1.0) and r["uncertainty_prot"].isna().all()
    assert (r["label"].to_numpy() == data.obs["cell_type"].astype(str).to_numpy()).mean() > 0.7
    zero = a.copy()
    prot = zero.obsm["protein"].copy()
    prot.iloc[:5] = 0
    zero.obsm["protein"] = prot
    zero.write_h5ad(tmp_path / "zero.h5ad")
    s = predict_cells([tmp_path / "zero.h5ad"], root / "model", tmp_path / "head", tmp_path / "z.tsv")
    z = pd.read_csv(tmp_path / "z.tsv", sep="\t")
    assert list(z["has_prot"][:6]) == [0, 0, 0, 0, 0, 1] and s["cells_rna_only"] == 5


@pytest.mark.slow
def test_predict_refuses_head_of_another_model(tiny_model, tmp_path):
    from omicsclip.heads.finetune import predict_cells

    root, _, _ = tiny_model
    finetune_embedding(root / "emb.zarr", tmp_path / "head", label_key="cell_type",
                       section={"fusion": "late", "epochs": 10})
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    meta["model_fingerprint"] = "0" * 64
    (tmp_path / "head" / "head.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="re-run finetune"):
        predict_cells([root / "cells.h5ad"], root / "model", tmp_path / "head", tmp_path / "p.tsv")
    assert not (tmp_path / "p.tsv").exists()


@pytest.mark.slow
def test_light_encoder_finetuning(tiny_model, tmp_path):
    """Last encoder layers trained with the head (lower lr), saved with it, and applied by predict."""
    from safetensors.torch import load_file

    from omicsclip.heads.finetune import apply_encoder_layers, predict_cells
    from omicsclip.model.modelio import load_model

    root, _, data = tiny_model
    section = {"fusion": "late", "epochs": 60, "finetune_encoder": True, "encoder_lr": 0.003}
    with pytest.raises(InputError, match="--store"):
        finetune_embedding(root / "emb.zarr", tmp_path / "x", label_key="cell_type", section=section)
    meta = finetune_embedding(root / "emb.zarr", tmp_path / "head", label_key="cell_type", section=section,
                              store=root / "store.zarr", model=root / "model")
    assert meta["encoder_finetuned"] and meta["metrics"]["accuracy"] > 0.8
    _, _, extra = load_head(tmp_path / "head")
    assert sorted(extra) == ["encoder.prot.proj.bias", "encoder.prot.proj.weight", "encoder.rna.proj.bias",
                             "encoder.rna.proj.weight"]
    base = load_model(root / "model")
    original = load_file(str(root / "model" / "model.safetensors"))
    assert not torch.allclose(extra["encoder.rna.proj.weight"], original["rna.proj.weight"])
    assert torch.allclose(extra["encoder.rna.proj.weight"], original["rna.proj.weight"], atol=0.5)  # light
    # predict applies the tuned layers: same probabilities as embedding with them by hand
    predict_cells([root / "cells.h5ad"], root / "model", tmp_path / "head", tmp_path / "p.tsv")
    df = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert apply_encoder_layers(base, extra)
    a = data.to_anndata()
    emb = base.embed(a.X, a.obsm["protein"], genes=list(a.var_names))
    head, meta2, _ = load_head(tmp_path / "head")
    pred = predict_head(head, emb["rna"], emb["prot"], mc_samples=meta2["params"]["mc_samples"], seed=0)
    assert np.allclose(df["probability"], pred["probs"].max(1), atol=1e-5)


@pytest.mark.slow
def test_fewlabel_baseline_pcs_from_store_and_model(tiny_model, tmp_path):
    from omicsclip.evaluation.fewlabel import BASELINE, rna_pcs_from_store, run_fewlabel

    root, _, data = tiny_model
    e = read_embedding(root / "emb.zarr")
    pcs = rna_pcs_from_store(root / "store.zarr", root / "model", list(e.obs.index), 10, e.split)
    assert pcs.shape == (data.n_cells, 10)
    train = e.split == "train"
    assert np.allclose(pcs[train].mean(0), 0, atol=1e-3)  # PCA centred on the training cells
    doc = run_fewlabel(root / "emb.zarr", tmp_path / "f.json", labels_per_class=(3,), n_draws=1, n_pcs=10,
                       section={"epochs": 10, "ensemble": 2, "mc_samples": 2}, store=root / "store.zarr",
                       model=root / "model")
    assert BASELINE in doc["methods"] and "computed from" in doc["baseline_pcs"]
    assert doc["curves"][BASELINE]["3"]["accuracy"]["mean"] > 0.5


def test_gated_head_calibration_on_out_of_bag_cells():
    """The gated experts' inverse temperature is fitted on out-of-bag cells and lowers the test ECE."""
    from omicsclip.heads.calibration import expected_calibration_error

    tr, te = typed(60, 31, noise=0.3), typed(1500, 32, noise=0.3)
    head = fit_head(tr[0], tr[1], tr[2], 4, HeadParams(fusion="gated", epochs=150))
    assert float(head.beta) != 1.0
    calibrated = expected_calibration_error(predict_head(head, te[0], te[1])["probs"], te[2])
    head.beta.fill_(1.0)
    raw = expected_calibration_error(predict_head(head, te[0], te[1])["probs"], te[2])
    assert calibrated < raw, (calibrated, raw)


def test_gated_head_without_out_of_bag_cells_keeps_unit_temperature():
    tr = typed(4, 33)  # one cell per class at most: every bootstrap keeps it, nothing is out-of-bag
    y = np.arange(4)
    head = fit_head(tr[0], tr[1], y, 4, HeadParams(fusion="gated", epochs=20))
    assert float(head.beta) == 1.0
