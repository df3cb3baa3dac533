"""CLI: ``index`` and ``query`` through typer's CliRunner and the installed ``omicsclip`` entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from typer.testing import CliRunner

from omicsclip.cli.main import app

runner = CliRunner()
TINY = ["preprocess.n_hvg=40", "model.rna_hidden=[32]", "model.prot_hidden=[16]", "model.embed_dim=8",
        "train.batch_size=64", "train.epochs=2", "train.warmup_steps=4", "train.num_threads=1",
        "train.checkpoint_every=50", "train.device=cpu"]


def _exe() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny store, model and embeddings (in-process; the CLI under test is index/query)."""
    from omicsclip.config import load_config
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.embed import embed_store
    from omicsclip.train.run import train_model

    tmp = tmp_path_factory.mktemp("cli_index")
    data = make_synthetic(n_cells=300, n_genes=80, n_proteins=6, n_types=4, seed=0)
    write_store(data, tmp / "cells.zarr")
    train_model(tmp / "cells.zarr", tmp / "model", load_config(None, TINY))
    embed_store(tmp / "cells.zarr", tmp / "model", tmp / "emb.zarr")
    new = make_synthetic(n_cells=40, n_genes=80, n_proteins=6, n_types=4, seed=0).to_anndata()
    new.obs_names = [f"new{i}" for i in range(new.n_obs)]
    rna_only = ad.AnnData(X=new.X, obs=pd.DataFrame(index=new.obs_names), var=new.var)
    rna_only.write_h5ad(tmp / "new_rna.h5ad")
    return tmp


def test_index_then_query_with_clirunner(trained, tmp_path):
    idx = tmp_path / "index"
    res = runner.invoke(app, ["index", str(trained / "emb.zarr"), "--out", str(idx), "--kind", "flat"])
    assert res.exit_code == 0, res.output
    meta = json.loads((idx / "meta.json").read_text())
    assert meta["kind"] == "flat"
    assert meta["n"] == 300
    assert meta["proteins"]
    assert meta["label_keys"] == ["cell_type"]
    out = tmp_path / "res"
    res = runner.invoke(app, ["query", str(trained / "new_rna.h5ad"), "--model", str(trained / "model"),
                              "--index", str(idx), "--out", str(out), "--k", "4"])
    assert res.exit_code == 0, res.output
    assert "rna->rna, rna->prot" in res.stdout
    nb = pd.read_parquet(out / "neighbours.parquet")
    assert len(nb) == 40 * 2 * 4
    assert set(nb.query_id) == {f"new{i}" for i in range(40)}
    assert ad.read_h5ad(out / "imputed_protein.h5ad").shape == (40, 6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == summary["k_requested"] == 4
    # k beyond the reference: every cell gets all 300 reference cells, and the summary says so
    big = tmp_path / "res_big"
    res = runner.invoke(app, ["query", str(trained / "new_rna.h5ad"), "--model", str(trained / "model"),
                              "--index", str(idx), "--out", str(big), "--k", "500"])
    assert res.exit_code == 0, res.output
    summary = json.loads((big / "summary.json").read_text())
    assert summary["k"] == 300
    assert summary["k_requested"] == 500
    assert len(pd.read_parquet(big / "neighbours.parquet")) == 40 * 2 * 300
    # refusing to overwrite is a clean one-line error with exit code 2
    res = runner.invoke(app, ["query", str(trained / "new_rna.h5ad"), "--model", str(trained / "model"),
                              "--index", str(idx), "--out", str(out)])
    assert res.exit_code == 2
    assert "already exists" in res.output


def test_bad_inputs_exit_2_with_one_line(trained, tmp_path):
    res = runner.invoke(app, ["query", str(trained / "new_rna.h5ad"), "--model", str(trained / "model"),
                              "--index", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "index folder not found" in res.output
    res = runner.invoke(app, ["index", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "i")])
    assert res.exit_code == 2
    assert "embeddings not found" in res.output
    res = runner.invoke(app, ["index", str(trained / "emb.zarr"), "--out", str(tmp_path / "i"),
                              "--set", "index.kind=annoy"])
    assert res.exit_code == 2
    assert "index.kind" in res.output
    assert not (tmp_path / "r").exists()
    assert not (tmp_path / "i").exists()


@pytest.mark.slow
def test_installed_entry_point(trained, tmp_path):
    idx, out = tmp_path / "index", tmp_path / "res"
    run = subprocess.run([_exe(), "index", str(trained / "emb.zarr"), "--out", str(idx)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([_exe(), "query", str(trained / "new_rna.h5ad"), "--model", str(trained / "model"),
                          "--index", str(idx), "--out", str(out), "--no-tsv"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_query_cells"] == 40
    assert summary["imputed_protein"]
    assert summary["label_keys"] == ["cell_type"]
    assert not (out / "neighbours.tsv").exists()
    assert (out / "labels.tsv").exists()
    assert "Traceback" not in run.stderr


def test_corrupt_index_is_one_clean_line(trained, tmp_path):
    idx = tmp_path / "index"
    assert runner.invoke(app, ["index", str(trained / "emb.zarr"), "--out", str(idx)]).exit_code == 0
    (idx / "prot.faiss").write_bytes(b"garbage")
    res = runner.invoke(app, ["query", str(trained / "new_rna.h5ad"), "--model", str(trained / "model"),
                              "--index", str(idx), "--out", str(tmp_path / "res")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == (f"omicsclip: error: {idx / 'prot.faiss'}: corrupt index file "
                                                   "(sha256 differs from meta.json); rebuild the index")
    assert not (tmp_path / "res").exists()
