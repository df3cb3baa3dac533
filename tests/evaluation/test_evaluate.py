"""evaluate: metrics.json structure, baselines on shared preprocessing, the CLI command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omicsclip.config import default_config
from omicsclip.errors import InputError
from omicsclip.evaluation import evaluate as E

CFG = default_config()
# evaluate_arrays' settings from the config (imputation as `omicsclip query` does it)
SETTINGS = {"fewlabel_fraction": CFG["evaluate"]["fewlabel_fraction"], "impute_k": CFG["query"]["impute_k"],
            "impute_temperature": CFG["query"]["temperature"], "impute_from": CFG["query"]["transfer_from"]}


@pytest.fixture(scope="module")
def arrays():
    """Synthetic CITE-seq data, log-normalised/scaled RNA and CLR protein, and its split.

    (The model's real preprocessing, scanpy HVGs included, is exercised by the end-to-end test below.)
    """
    from omicsclip.io.split import make_split
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.preprocess import clr, log_normalize

    d = make_synthetic(n_cells=1200, n_genes=400, n_proteins=10, n_types=4, seed=1)
    split = make_split(d.obs, test_fraction=0.25, val_fraction=0.15, seed=0).to_numpy()
    x = log_normalize(d.rna, 1e4).toarray()
    tr = split == "train"
    hvg = np.argsort(-x[tr].var(0))[:200]
    x = x[:, hvg]
    sd = x[tr].std(0)
    rna_input = ((x - x[tr].mean(0)) / np.where(sd > 0, sd, 1)).clip(-10, 10).astype(np.float32)
    labels = d.obs["cell_type"].astype(str).to_numpy().astype(object)
    return {"rna_input": rna_input, "prot_clr": clr(d.prot), "split": split, "labels": labels,
            "proteins": d.protein_names}


def _run(arrays, emb_rna, emb_prot, labels="default"):
    return E.evaluate_arrays(
        emb_rna=emb_rna, emb_prot=emb_prot, rna_input=arrays["rna_input"], prot_clr=arrays["prot_clr"],
        split=arrays["split"], labels=arrays["labels"] if labels == "default" else labels,
        proteins=arrays["proteins"], n_pcs=20, seed=0, **SETTINGS,
    )


def test_metrics_structure_and_baselines(arrays):
    rng = np.random.default_rng(0)
    n = len(arrays["split"])
    shared = rng.normal(size=(n, 16)).astype(np.float32)  # an embedding where each cell's pair is identical
    res = _run(arrays, shared, shared)
    assert set(res["methods"]) == {"omicsclip", "cca", "ridge", "pca"}
    for row in res["methods"].values():
        assert tuple(row) == E.METRIC_KEYS
    om, cca, ridge, pca = (res["methods"][m] for m in ("omicsclip", "cca", "ridge", "pca"))
    assert om["foscttm"] == 0.0
    assert om["recall_at_1"] == 1.0
    assert om["celltype_match"] == 1.0
    assert res["n_test_cells"] == int((arrays["split"] == "test").sum())
    assert res["seed"] == 0
    # PCA cannot match across modalities and does not impute
    assert all(pca[k] is None for k in E.METRIC_KEYS if k != "fewlabel_accuracy")
    assert 0.4 < pca["fewlabel_accuracy"] <= 1.0
    assert cca["protein_pearson"] is None
    assert cca["protein_rmse"] is None
    # the synthetic protein is driven by RNA-visible state: the baselines beat chance clearly
    for row in (cca, ridge):
        assert row["foscttm"] < 0.3
        assert row["recall_at_50"] > 50 / res["n_test_cells"]
        assert row["celltype_match"] > 0.4
    assert ridge["protein_pearson"] > 0.3
    assert ridge["protein_rmse"] > 0
    assert set(res["protein_pearson_per_protein"]) == {"omicsclip", "ridge"}
    assert list(res["protein_pearson_per_protein"]["ridge"]) == arrays["proteins"]
    v = res["validation"]
    assert v["n_val_cells"] == int((arrays["split"] == "val").sum())
    assert v["foscttm"] == 0.0
    assert set(res["match_temperature"]) == {"omicsclip", "cca", "ridge"}


def test_random_embedding_is_chance_and_imputation_uses_training_cells(arrays):
    rng = np.random.default_rng(1)
    n = len(arrays["split"])
    res = _run(arrays, rng.normal(size=(n, 8)), rng.normal(size=(n, 8)))
    om = res["methods"]["omicsclip"]
    assert om["foscttm"] == pytest.approx(0.5, abs=0.05)
    assert abs(om["protein_pearson"]) < 0.2  # random neighbours carry no information
    # an embedding equal to the measured protein makes kNN imputation from training cells informative
    prot = arrays["prot_clr"]
    res = _run(arrays, prot, prot)
    assert res["methods"]["omicsclip"]["protein_pearson"] > 0.8


def test_pcs_from_row_function_equal_pcs_from_array(arrays, monkeypatch):
    x = arrays["rna_input"]
    tr = np.flatnonzero(arrays["split"] == "train")
    monkeypatch.setattr(E, "_CHUNK_CELLS", 100)  # several chunks
    ref, _ = E.baseline_pcs(x, len(x), tr, 10, 0)
    got, pca = E.baseline_pcs(lambda idx: x[idx], len(x), tr, 10, 0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert got.shape == (len(x), 10)
    assert pca.n_components_ == 10
    monkeypatch.setattr(E, "PCA_FIT_MAX_CELLS", 50)  # fit on a subset of the training cells
    sub, pca = E.baseline_pcs(x, len(x), tr, 10, 0)
    assert sub.shape == ref.shape
    assert pca.n_samples_ == 50


def test_unlabelled_data_gives_null_label_metrics(arrays):
    n = len(arrays["split"])
    emb = np.random.default_rng(2).normal(size=(n, 8))
    res = _run(arrays, emb, emb, labels=None)
    for m in ("omicsclip", "cca", "ridge", "pca"):
        assert res["methods"][m]["celltype_match"] is None
        assert res["methods"][m]["fewlabel_accuracy"] is None
    assert res["methods"]["omicsclip"]["foscttm"] == 0.0


def test_write_metrics_is_atomic_json(tmp_path):
    out = tmp_path / "metrics.json"
    E.write_metrics({"methods": {"pca": {"foscttm": None, "x": float("nan"), "y": np.float32(0.5)}}}, out)
    got = json.loads(out.read_text())
    assert got["methods"]["pca"] == {"foscttm": None, "x": None, "y": 0.5}
    with pytest.raises(InputError, match="already exists"):
        E.write_metrics({}, out)
    E.write_metrics({"a": 1}, out, overwrite=True)
    assert json.loads(out.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_labels_follow_the_shared_unlabelled_rule():
    """Missing, blank and NA-like labels are unlabelled (omicsclip.conventions); other values, "unknown"
    included, are classes; no usable column gives None."""
    import pandas as pd

    obs = pd.DataFrame({"cell_type": ["B", None, float("nan"), "", " NA ", "nan", "unknown", " T "]})
    assert list(E._labels(obs, "cell_type")) == ["B", None, None, None, None, None, "unknown", "T"]
    assert E._labels(obs, "missing") is None
    assert E._labels(obs, "") is None
    assert E._labels(pd.DataFrame({"cell_type": ["", None]}), "cell_type") is None


def test_split_alignment_refuses_foreign_store(tmp_path):
    import pandas as pd

    obs = pd.DataFrame(index=["a", "b", "z"])
    split = pd.Series(["train", "test", "val"], index=["a", "b", "c"])
    with pytest.raises(InputError, match="not in the model's split"):
        E._align_split(obs, split, tmp_path / "s.zarr")
    assert list(E._align_split(obs.iloc[:2], split, tmp_path)) == ["train", "test"]


# ------------------------------------------------------------------------------------------ end to end


def _omicsclip_exe() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained model on a synthetic store (skips until the training stage exists)."""
    train = pytest.importorskip("omicsclip.train.run")
    from omicsclip.config import load_config
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("e2e")
    store = write_store(make_synthetic(n_cells=800, n_genes=300, n_proteins=8, n_types=4, seed=3),
                        root / "s.zarr")
    cfg = load_config(None, ["train.epochs=2", "train.batch_size=128", "preprocess.n_hvg=150",
                             "model.rna_hidden=[64]", "model.prot_hidden=[32]", "model.embed_dim=16"])
    train.train_model(store, root / "model", cfg)
    return store, root / "model"


@pytest.mark.slow
def test_evaluate_cli_end_to_end(trained, tmp_path):
    from typer.testing import CliRunner

    from omicsclip.cli.main import app

    store, model = trained
    out = tmp_path / "metrics.json"
    r = CliRunner().invoke(app, ["evaluate", str(store), "--model", str(model), "--out", str(out),
                                 "--set", "evaluate.n_pcs=10"])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert set(got["methods"]) == {"omicsclip", "cca", "ridge", "pca"}
    om = got["methods"]["omicsclip"]
    assert 0 <= om["foscttm"] <= 1
    assert 0 <= om["recall_at_10"] <= 1
    assert om["fewlabel_accuracy"] is not None
    assert got["settings"]["n_pcs"] == 10
    assert got["n_test_cells"] > 0
    assert got["validation"]["n_val_cells"] > 0
    # refusing to overwrite is a bad-input error (exit 2) from the installed entry point, no traceback
    p = subprocess.run([_omicsclip_exe(), "evaluate", str(store), "--model", str(model), "--out", str(out)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert p.returncode == 2
    assert "already exists" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_evaluate_cli_missing_model_is_one_line(tmp_path):
    p = subprocess.run([_omicsclip_exe(), "evaluate", str(tmp_path / "none.zarr"), "--model",
                        str(tmp_path / "nomodel"), "--out", str(tmp_path / "m.json")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("omicsclip: error:")
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_baselines_take_their_own_pcs_of_the_scaled_genes(trained):
    """The baselines' PCs come from the model's scaled HVGs (150 here), not from the model's input (its 30 PCs,
    protein genes and a depth feature): asking for 40 PCs gives 40, and they are the PCs of rna_genes, the input
    before projection."""
    import torch

    from omicsclip.evaluation.evaluate import evaluate, scaled_gene_rows
    from omicsclip.io.store import read_store
    from omicsclip.model.alignment import align_rna
    from omicsclip.model.modelio import load_model

    store, model_dir = trained
    model = load_model(model_dir)
    n_genes_in = len(model.state.protein_genes or [])
    assert model.pre.rna_dim == 30 + n_genes_in + 1
    assert len(model.state.genes) == 150
    got = evaluate(store, model_dir, n_pcs=40, label_key=CFG["evaluate"]["label_key"], **SETTINGS)
    assert got["settings"]["n_pcs"] == 40
    data = read_store(store)
    x = scaled_gene_rows(model, data.rna, data.gene_names)(np.arange(20))
    counts, lib, _ = align_rna(data.rna[:20], data.gene_names, model.state)
    z = model.pre.rna(torch.from_numpy(counts.toarray()), torch.from_numpy(lib)).numpy()
    assert x.shape == (20, 150)
    np.testing.assert_allclose(z[:, :-1], x @ model.state.rna_projection.T, rtol=1e-4, atol=1e-4)
