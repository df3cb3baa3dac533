"""The finetune command on embeddings files, and predict / encoder fine-tuning with a tiny real model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from heads_data import FINETUNE, write_embedding

from omicsclip.config import load_config
from omicsclip.errors import InputError
from omicsclip.heads import finetune_embedding, load_head, predict_head, read_embedding


def test_finetune_embedding_end_to_end(tmp_path):
    emb = write_embedding(tmp_path / "emb.zarr")
    section = {**FINETUNE, "fusion": "late", "epochs": 40}
    meta = finetune_embedding(emb, tmp_path / "head", label_key="cell_type", section=section,
                              ignore_labels=["unknown"], labels_per_class=5)
    assert meta["classes"] == ["B", "Mono", "NK", "T"]  # "unknown" and "" are unlabelled
    assert meta["n_train_cells"] == 20
    assert set(meta["class_counts"].values()) == {5}
    assert meta["model_fingerprint"] == "fp-test"
    assert meta["metrics"]["split"] == "test"
    assert meta["metrics"]["accuracy"] > 0.9
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
        finetune_embedding(tmp_path / "nope.zarr", tmp_path / "h", label_key="cell_type", section=FINETUNE)
    emb = write_embedding(tmp_path / "emb.zarr", n=60)
    with pytest.raises(InputError, match="no label column"):
        finetune_embedding(emb, tmp_path / "h", label_key="celltype", section=FINETUNE)
    with pytest.raises(InputError, match="finetune.fusion"):
        finetune_embedding(emb, tmp_path / "h", label_key="cell_type", section={**FINETUNE, "fusion": "sum"})



# ------------------------------------------------------------------------------- with a (tiny) real model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Synthetic counts -> store -> an (untrained, seeded) dual encoder saved like `omicsclip train` -> embed."""
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
    cfg = load_config(None, ["model.rna_hidden=[32]", "model.prot_hidden=[16]", "model.embed_dim=16"])
    # the plain model input (scaled genes: no PCs, protein genes or depth features), 100 HVGs
    plain = {**{k: v for k, v in cfg["preprocess"].items() if k != "genes"}, "n_hvg": 100, "n_pcs": 0, "protein_genes": 0, "depth_features": False}
    state = fit_preprocessing(data.rna[tr], data.prot[tr], data.gene_names, data.protein_names, **plain)
    torch.manual_seed(0)
    model = build_model(len(state.genes), len(state.proteins), cfg["model"], cfg["train"])
    (root / "model").mkdir()
    fingerprint = write_model_files(root / "model", model, state, cfg, {})
    write_split(split, root / "model" / "split.tsv")
    embed_store(root / "store.zarr", root / "model", root / "emb.zarr")
    data.to_anndata().write_h5ad(root / "cells.h5ad")
    return root, fingerprint, data


CHUNK = load_config(None)["query"]["chunk_cells"]
COLUMNS = ["barcode", "label", "probability", "weight_rna", "weight_prot", "uncertainty", "uncertainty_rna",
           "uncertainty_prot", "has_rna", "has_prot", "prot_missing_fraction"]


@pytest.mark.slow
def test_predict_new_cells_with_missing_modalities(tiny_model, tmp_path):
    import anndata as ad

    from omicsclip.heads import predict_cells

    root, fingerprint, data = tiny_model
    meta = finetune_embedding(root / "emb.zarr", tmp_path / "head", label_key="cell_type",
                              section={**FINETUNE, "fusion": "gated", "epochs": 60, "ensemble": 3})
    assert meta["model_fingerprint"] == fingerprint
    summary = predict_cells([root / "cells.h5ad"], root / "model", tmp_path / "head", tmp_path / "p.tsv", chunk_cells=CHUNK)
    df = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert list(df.columns) == COLUMNS
    assert len(df) == data.n_cells == summary["n_cells"]
    assert (df["label"].to_numpy() == data.obs["cell_type"].astype(str).to_numpy()).mean() > 0.8
    assert np.allclose(df["weight_rna"] + df["weight_prot"], 1.0, atol=1e-4)
    # RNA-only input, and cells whose protein counts are all zero: flagged and predicted from RNA alone
    a = data.to_anndata()
    rna_only = ad.AnnData(X=a.X, obs=a.obs[["cell_type"]].copy(), var=a.var.copy())
    rna_only.write_h5ad(tmp_path / "rna_only.h5ad")
    predict_cells([tmp_path / "rna_only.h5ad"], root / "model", tmp_path / "head", tmp_path / "r.tsv",
                  modality="rna", chunk_cells=CHUNK)
    r = pd.read_csv(tmp_path / "r.tsv", sep="\t")
    assert (r["has_prot"] == 0).all()
    assert (r["has_rna"] == 1).all()
    assert np.allclose(r["weight_rna"], 1.0)
    assert r["uncertainty_prot"].isna().all()
    assert (r["label"].to_numpy() == data.obs["cell_type"].astype(str).to_numpy()).mean() > 0.7
    zero = a.copy()
    prot = zero.obsm["protein"].copy()
    prot.iloc[:5] = 0
    zero.obsm["protein"] = prot
    zero.write_h5ad(tmp_path / "zero.h5ad")
    s = predict_cells([tmp_path / "zero.h5ad"], root / "model", tmp_path / "head", tmp_path / "z.tsv", chunk_cells=CHUNK)
    z = pd.read_csv(tmp_path / "z.tsv", sep="\t")
    assert list(z["has_prot"][:6]) == [0, 0, 0, 0, 0, 1]
    assert s["cells_rna_only"] == 5


@pytest.mark.slow
def test_predict_refuses_head_of_another_model(tiny_model, tmp_path):
    from omicsclip.heads import predict_cells

    root, _, _ = tiny_model
    finetune_embedding(root / "emb.zarr", tmp_path / "head", label_key="cell_type",
                       section={**FINETUNE, "fusion": "late", "epochs": 10})
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    meta["model_fingerprint"] = "0" * 64
    (tmp_path / "head" / "head.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="re-run finetune"):
        predict_cells([root / "cells.h5ad"], root / "model", tmp_path / "head", tmp_path / "p.tsv", chunk_cells=CHUNK)
    assert not (tmp_path / "p.tsv").exists()


@pytest.mark.slow
def test_light_encoder_finetuning(tiny_model, tmp_path):
    """Last encoder layers trained with the head (lower lr), saved with it, and applied by predict."""
    from safetensors.torch import load_file

    from omicsclip.heads import apply_encoder_layers, predict_cells
    from omicsclip.model.modelio import load_model

    root, _, data = tiny_model
    section = {**FINETUNE, "fusion": "late", "epochs": 60, "finetune_encoder": True, "encoder_lr": 0.003}
    with pytest.raises(InputError, match="--store"):
        finetune_embedding(root / "emb.zarr", tmp_path / "x", label_key="cell_type", section=section)
    meta = finetune_embedding(root / "emb.zarr", tmp_path / "head", label_key="cell_type", section=section,
                              store=root / "store.zarr", model=root / "model")
    assert meta["encoder_finetuned"]
    assert meta["metrics"]["accuracy"] > 0.8
    _, _, extra = load_head(tmp_path / "head")
    assert sorted(extra) == ["encoder.prot.proj.bias", "encoder.prot.proj.weight", "encoder.rna.proj.bias",
                             "encoder.rna.proj.weight"]
    base = load_model(root / "model")
    original = load_file(str(root / "model" / "model.safetensors"))
    assert not torch.allclose(extra["encoder.rna.proj.weight"], original["rna.proj.weight"])
    assert torch.allclose(extra["encoder.rna.proj.weight"], original["rna.proj.weight"], atol=0.5)  # light
    # predict applies the tuned layers: same probabilities as embedding with them by hand
    predict_cells([root / "cells.h5ad"], root / "model", tmp_path / "head", tmp_path / "p.tsv", chunk_cells=CHUNK)
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
    doc = run_fewlabel(root / "emb.zarr", tmp_path / "f.json", label_key="cell_type", ignore_labels=[],
                       labels_per_class=(3,), n_draws=1, n_pcs=10,
                       section={**FINETUNE, "epochs": 10, "ensemble": 2, "mc_samples": 2}, store=root / "store.zarr",
                       model=root / "model")
    assert BASELINE in doc["methods"]
    assert "computed from" in doc["baseline_pcs"]
    assert doc["curves"][BASELINE]["3"]["accuracy"]["mean"] > 0.5

