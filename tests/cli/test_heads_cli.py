"""CLI: finetune, predict, fewlabel through typer's CliRunner and the installed ``omicsclip`` entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from omicsclip.cli.main import app

runner = CliRunner()
FAST = ["--set", "finetune.epochs=20", "--set", "finetune.ensemble=2", "--set", "finetune.mc_samples=2"]


def _exe() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def emb(tmp_path_factory) -> Path:
    """A small `omicsclip embed`-like file: 3 types, split, labels with 'unknown' and empty values."""
    import anndata as ad

    rng = np.random.default_rng(0)
    n, d = 240, 12
    t = rng.integers(0, 3, n)
    cr, cp = _unit(rng.normal(size=(3, d)) + 2), _unit(rng.normal(size=(3, d)) - 2)
    labels = np.array(["B", "NK", "T"], dtype=object)[t]
    labels[:15] = "unknown"
    labels[15:20] = ""
    a = ad.AnnData(obs=pd.DataFrame({"cell_type": labels, "split": rng.choice(["train", "test"], n, p=[.7, .3])},
                                    index=[f"c{i}" for i in range(n)]))
    a.obsm["X_omicsclip_rna"] = _unit(cr[t] + 0.2 * rng.normal(size=(n, d)))
    a.obsm["X_omicsclip_prot"] = _unit(cp[t] + 0.2 * rng.normal(size=(n, d)))
    a.uns["omicsclip"] = {"model_fingerprint": "fp-cli"}
    path = tmp_path_factory.mktemp("emb") / "emb.zarr"
    with ad.settings.override(zarr_write_format=2):
        a.write_zarr(path)
    return path


def test_finetune_cli(emb, tmp_path):
    out = tmp_path / "head"
    res = runner.invoke(app, ["finetune", str(emb), "--labels", "cell_type", "--out", str(out),
                              "--ignore-label", "unknown", "--labels-per-class", "4", "--fusion", "late", *FAST])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed["classes"] == ["B", "NK", "T"]
    assert "ece" in printed["metrics"]
    meta = json.loads((out / "head.json").read_text())
    assert meta["architecture"]["fusion"] == "late"
    assert meta["n_train_cells"] == 12
    # an existing output is refused (exit 2, one line, no traceback)
    res = runner.invoke(app, ["finetune", str(emb), "--labels", "cell_type", "--out", str(out), *FAST])
    assert res.exit_code == 2
    assert "already exists" in res.stderr
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["finetune", str(emb), "--labels", "celltype", "--out", str(tmp_path / "h2")])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"omicsclip: error: {emb}: obs has no label column 'celltype' (columns: cell_type, split)"]
    res = runner.invoke(app, ["finetune", str(emb), "--out", str(tmp_path / "h3"), "--fusion", "sum"])
    assert res.exit_code == 2
    assert "finetune.fusion" in res.stderr


def test_fewlabel_cli(emb, tmp_path):
    out = tmp_path / "few.json"
    res = runner.invoke(app, ["fewlabel", str(emb), "--out", str(out), "--labels-per-class", "2",
                              "--labels-per-class", "5", "--draws", "2", *FAST])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["classes"] == ["B", "NK", "T"]  # evaluate.ignore_labels: [unknown] by default
    assert doc["labels_per_class"] == [2, 5]
    assert doc["n_draws"] == 2
    assert set(doc["methods"]) == {"early", "late", "gated", "uncertainty", "tensor", "rna", "prot"}
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in res.stdout.splitlines()]
    assert rows[0] == ["accuracy", "2/class", "5/class"]
    assert [r[0] for r in rows[2:]] == doc["methods"]


class _FakeModel:
    """Stands in for omicsclip.model.modelio.TrainedModel: embeds counts by a fixed random projection."""

    proteins = ["CD3", "CD4", "CD8a", "CD19"]  # the panel of _counts_h5ad

    def __init__(self, fingerprint: str, d: int = 12) -> None:
        self.fingerprint = fingerprint
        self.d = d

    def embed(self, rna=None, prot=None, *, genes=None, proteins=None, batch_size=4096):
        out = {}
        self.last_report = {"prot": {"missing_fraction": 0.0}} if prot is not None else {}
        for key, x in (("rna", rna), ("prot", prot)):
            if x is not None:
                x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float64)
                proj = np.random.default_rng(len(key)).normal(size=(x.shape[1], self.d))
                out[key] = _unit(np.log1p(x) @ proj + 1e-3)
        return out


def _counts_h5ad(path: Path, n: int = 30) -> Path:
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(2.0, size=(n, 20)).astype(np.float32)),
                   obs=pd.DataFrame(index=[f"n{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"g{i}" for i in range(20)]))
    a.obsm["protein"] = pd.DataFrame(rng.poisson(5.0, size=(n, 4)).astype(np.float32), index=a.obs_names,
                                     columns=["CD3", "CD4", "CD8a", "CD19"])
    a.write_h5ad(path)
    return path


def test_predict_cli_checks_fingerprint(emb, tmp_path, monkeypatch):
    import omicsclip.model.modelio

    head = tmp_path / "head"
    assert runner.invoke(app, ["finetune", str(emb), "--out", str(head), "--fusion", "gated", *FAST]).exit_code == 0
    cells = _counts_h5ad(tmp_path / "new.h5ad")
    monkeypatch.setattr(omicsclip.model.modelio, "load_model", lambda path, device="cpu": _FakeModel("other-model"))
    res = runner.invoke(app, ["predict", str(cells), "--model", str(tmp_path), "--head", str(head),
                              "--out", str(tmp_path / "p.tsv")])
    assert res.exit_code == 2
    assert "trained on embeddings of model fp-cli" in res.stderr
    assert not (tmp_path / "p.tsv").exists()
    monkeypatch.setattr(omicsclip.model.modelio, "load_model", lambda path, device="cpu": _FakeModel("fp-cli"))
    res = runner.invoke(app, ["predict", str(cells), "--model", str(tmp_path), "--head", str(head),
                              "--out", str(tmp_path / "p.tsv")])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert len(df) == 30
    assert set(df["label"]) <= {"B", "NK", "T", "unknown"}
    assert (df["has_rna"] == 1).all()
    assert (df["has_prot"] == 1).all()
    assert json.loads(res.stdout)["cells_both"] == 30


@pytest.mark.slow
def test_installed_entry_point(emb, tmp_path):
    out = tmp_path / "head"
    proc = subprocess.run([_exe(), "finetune", str(emb), "--labels", "cell_type", "--out", str(out),
                           "--fusion", "uncertainty", *FAST], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "head.json").read_text())["architecture"]["fusion"] == "uncertainty"
    assert (out / "head.safetensors").stat().st_size > 0


def test_missing_embedding_is_one_line_error(tmp_path):
    res = runner.invoke(app, ["fewlabel", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "f.json")])
    assert res.exit_code == 2
    assert res.stderr.startswith("omicsclip: error:")
    assert "does not exist" in res.stderr
