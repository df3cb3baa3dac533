"""`omicsclip train` and `omicsclip embed`: CliRunner, errors as one line, and the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
from conftest import TINY, tiny_store
from typer.testing import CliRunner

from omicsclip.cli.main import app

runner = CliRunner()
SETS = [x for s in TINY + ["train.epochs=2"] for x in ("--set", s)]


def _omicsclip() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("cli") / "cells.zarr")


def test_help_has_examples():
    for cmd in ("train", "embed"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0
        assert "Examples" in r.output


def test_train_then_embed(store, tmp_path):
    model = tmp_path / "model"
    r = runner.invoke(app, ["train", str(store), "--out", str(model), *SETS, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (model / "model.safetensors").exists()
    assert json.loads((model / "model.json").read_text())["config"]["train"]["device"] == "cpu"
    r = runner.invoke(app, ["train", str(store), "--out", str(model), *SETS])
    assert r.exit_code == 2
    assert "already exists" in r.output
    r = runner.invoke(app, ["train", str(store), "--out", str(model), *SETS, "--resume"])
    assert r.exit_code == 0  # already complete: nothing to do
    emb = tmp_path / "emb.zarr"
    r = runner.invoke(app, ["embed", str(store), "--model", str(model), "--out", str(emb)])
    assert r.exit_code == 0, r.output
    assert "X_omicsclip_joint" in ad.read_zarr(emb).obsm


def test_bad_inputs_exit_2_with_one_line(store, tmp_path):
    r = runner.invoke(app, ["train", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1
    assert "store not found" in r.output
    r = runner.invoke(app, ["train", str(store), "--out", str(tmp_path / "m"), "--set", "train.epochs=0"])
    assert r.exit_code == 2
    assert "train.epochs" in r.output
    r = runner.invoke(app, ["embed", str(store), "--model", str(tmp_path / "nomodel"), "--out",
                            str(tmp_path / "e.zarr")])
    assert r.exit_code == 2
    assert "model folder not found" in r.output


@pytest.mark.slow
def test_installed_entry_point(store, tmp_path):
    model = tmp_path / "model"
    r = subprocess.run([_omicsclip(), "train", str(store), "--out", str(model), *SETS,
                        "--set", "preprocess.n_hvg=0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(model)
    r = subprocess.run([_omicsclip(), "embed", str(store), "--model", str(model), "--out",
                        str(tmp_path / "emb.zarr")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    arch = json.loads((model / "model.json").read_text())["config"]["model"]
    width = arch["embed_dim"] * arch["members"]  # an ensemble's members sit side by side
    assert ad.read_zarr(tmp_path / "emb.zarr").obsm["X_omicsclip_rna"].shape == (300, width)
    r = subprocess.run([_omicsclip(), "embed", str(store), "--model", str(model), "--out",
                        str(tmp_path / "emb.zarr")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.startswith("omicsclip: error:")
    assert "Traceback" not in r.stderr
