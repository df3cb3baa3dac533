"""CLI: synth, ingest, inspect through typer's CliRunner and the installed ``omicsclip`` entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from omicsclip.cli.main import app

runner = CliRunner()


def _exe() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


@pytest.fixture(scope="module")
def synth_h5ad(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "cells.h5ad"
    res = runner.invoke(app, ["synth", "--out", str(out), "--cells", "300", "--genes", "120", "--proteins", "8",
                              "--isotypes", "2", "--batches", "2", "--seed", "3"])
    assert res.exit_code == 0, res.output
    return out


def test_synth_then_ingest_then_inspect(synth_h5ad, tmp_path):
    import anndata as ad

    store = tmp_path / "s.zarr"
    res = runner.invoke(app, ["ingest", str(synth_h5ad), "--out", str(store), "--set", "ingest.chunk_cells=128"])
    assert res.exit_code == 0, res.output
    assert store.is_dir()
    res = runner.invoke(app, ["inspect", str(store), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    a = ad.read_h5ad(synth_h5ad)
    assert d["n_cells"] == 300
    assert d["n_genes"] == 120
    assert d["n_proteins"] == 8  # the 2 isotype controls are recognised by name and removed
    assert set(d["obs"]["batch"]) == set(a.obs["batch"].astype(str))
    assert d["provenance"]["options"]["chunk_cells"] == 128
    res = runner.invoke(app, ["inspect", str(store)])
    assert res.exit_code == 0
    assert "proteins   8" in res.stdout
    assert "provenance" in res.stdout


def test_ingest_errors_are_one_line_exit_2(synth_h5ad, tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    res = runner.invoke(app, ["ingest", str(synth_h5ad), "--out", str(store)])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"omicsclip: error: {store} already exists; pass --overwrite "
                                                "(Python: overwrite=True) to replace it"]
    fake = tmp_path / "x.h5ad"
    fake.write_text("not hdf5")
    res = runner.invoke(app, ["ingest", str(fake), "--out", str(tmp_path / "t.zarr")])
    assert res.exit_code == 2
    assert "not an HDF5 file" in res.stderr
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["ingest", str(synth_h5ad), "--out", str(tmp_path / "t.zarr"), "--set",
                              "ingest.pairing=sometimes"])
    assert res.exit_code == 2
    assert "ingest.pairing" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr", "x.h5ad"]  # nothing half-written


def test_pairing_flag_and_allow_normalized_flag(tmp_path):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    bcs = [f"C{i}" for i in range(30)]
    ad.AnnData(X=sp.csr_matrix(rng.poisson(1, (30, 12)).astype(np.float32) * 0.5),
               obs=pd.DataFrame(index=bcs)).write_h5ad(tmp_path / "rna.h5ad")
    ad.AnnData(X=rng.poisson(9, (25, 4)).astype(np.float32),
               obs=pd.DataFrame(index=bcs[5:]), var=pd.DataFrame(index=list("ABCD"))).write_h5ad(tmp_path / "p.h5ad")
    args = ["ingest", str(tmp_path / "rna.h5ad"), str(tmp_path / "p.h5ad"), "--out", str(tmp_path / "s.zarr")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "--pairing intersect" in res.stderr
    res = runner.invoke(app, args + ["--pairing", "intersect"])
    assert res.exit_code == 2
    assert "--allow-normalized" in res.stderr
    res = runner.invoke(app, args + ["--pairing", "intersect", "--allow-normalized"])
    assert res.exit_code == 0, res.output
    from omicsclip.io.store import store_info

    info = store_info(tmp_path / "s.zarr")
    assert len(info["obs"]) == 25
    assert bool(info["uns"]["provenance"]["allow_normalized"])


def test_help_has_examples():
    for cmd in ("synth", "ingest", "inspect"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0
        assert "Examples" in res.stdout
        assert "omicsclip " + cmd in res.stdout


@pytest.mark.slow
def test_installed_entry_point(synth_h5ad, tmp_path):
    exe = _exe()
    store = tmp_path / "s.zarr"
    p = subprocess.run([exe, "ingest", str(synth_h5ad), "--out", str(store)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(store)
    p = subprocess.run([exe, "ingest", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "t.zarr")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == f"omicsclip: error: {tmp_path / 'missing.h5ad'}: no such file or directory"
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "t.zarr").exists()
