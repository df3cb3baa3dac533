"""Ingest stores canonical protein names, keeps the input's in ``original_name`` and reports the mapping."""

from __future__ import annotations

import logging

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import shared_h5ad
from typer.testing import CliRunner

from omicsclip.cli.main import app
from omicsclip.config import default_config
from omicsclip.errors import InputError
from omicsclip.io.ingest import ingest, ingest_from_config
from omicsclip.io.protein_names import harmonise_protein_names
from omicsclip.io.readers import open_input
from omicsclip.io.store import read_store, store_info

PANEL = ["CD8a_TotalSeqB", "PD-1", "cd4", "MyMarker", "IgG1_isotype"]


def _adata(names=PANEL, n=40, seed=0):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (n, 30)).astype(np.float32)), obs=obs,
                   var=pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    a.obsm["protein"] = pd.DataFrame(rng.poisson(20, (n, len(names))).astype(np.float32), index=obs.index,
                                     columns=names)
    return a


def test_store_has_canonical_names_and_originals(tmp_path, caplog):
    a = _adata()
    with caplog.at_level(logging.INFO):
        out = ingest(a, tmp_path / "s.zarr")
    info = store_info(out)
    prot = info["proteins"]
    assert list(prot.index) == ["CD8a", "CD279", "CD4", "MyMarker"]  # the isotype control is removed
    assert list(prot["original_name"]) == ["CD8a_TotalSeqB", "PD-1", "cd4", "MyMarker"]
    uns = info["uns"]["protein_names"]
    assert dict(zip(uns["mapped_from"], uns["mapped_to"], strict=True)) == {
        "CD8a_TotalSeqB": "CD8a", "PD-1": "CD279", "cd4": "CD4"}
    assert list(uns["unknown"]) == ["MyMarker"]
    assert info["uns"]["provenance"]["options"]["harmonise_proteins"]
    lines = [r.getMessage() for r in caplog.records if "protein names: 3 mapped" in r.getMessage()]
    assert len(lines) == 1
    assert "PD-1 -> CD279" in lines[0]
    assert "1 unknown kept as given (MyMarker)" in lines[0]
    # counts follow their columns
    np.testing.assert_array_equal(read_store(out).prot, a.obsm["protein"].to_numpy()[:, :4])


def test_harmonise_off_and_user_aliases_from_config(tmp_path):
    a = _adata()
    section = {**default_config()["ingest"], "harmonise_proteins": False}
    off = ingest_from_config(a, tmp_path / "off.zarr", section)
    assert list(store_info(off)["proteins"].index) == PANEL[:4]
    assert "protein_names" not in store_info(off)["uns"]
    aliases = tmp_path / "ours.tsv"
    aliases.write_text("MyMarker\tCD99\n")
    on = ingest_from_config(a, tmp_path / "on.zarr", {**default_config()["ingest"],
                                                      "protein_aliases": str(aliases)})
    info = store_info(on)
    assert list(info["proteins"].index) == ["CD8a", "CD279", "CD4", "CD99"]
    assert info["uns"]["provenance"]["options"]["protein_aliases"] == str(aliases)


def test_a_store_read_again_keeps_the_first_originals(tmp_path):
    out = ingest(_adata(), tmp_path / "s.zarr")
    with open_input([out], harmonise_proteins=True) as src:
        assert src.proteins == ["CD8a", "CD279", "CD4", "MyMarker"]
        assert list(src.protein_frame["original_name"]) == ["CD8a_TotalSeqB", "PD-1", "cd4", "MyMarker"]
    with open_input([out]) as src:  # a store is read with its own names by default
        assert src.proteins == ["CD8a", "CD279", "CD4", "MyMarker"]


def test_collisions_lose_no_column(tmp_path):
    names = ["PD-1 (CD279)", "PD1 (CD279)", "CD3"]
    a = _adata(names)
    out = ingest(a, tmp_path / "s.zarr")
    info = store_info(out)
    assert list(info["proteins"].index) == ["CD279", "PD1 (CD279)", "CD3"]
    assert list(info["uns"]["protein_names"]["collisions"]) == ["PD1 (CD279)"]
    np.testing.assert_array_equal(read_store(out).prot, a.obsm["protein"].to_numpy())


def test_missing_alias_file_is_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match="protein alias file not found"):
        ingest(_adata(), tmp_path / "s.zarr", protein_aliases=tmp_path / "nope.tsv")
    assert not (tmp_path / "s.zarr").exists()


def test_cli_flag(tmp_path):
    h5 = tmp_path / "cells.h5ad"
    _adata().write_h5ad(h5)
    aliases = tmp_path / "ours.yaml"
    aliases.write_text("MyMarker: CD99\n")
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(h5), "--out", str(tmp_path / "s.zarr"), "--protein-aliases",
                              str(aliases)])
    assert res.exit_code == 0, res.output
    assert list(store_info(tmp_path / "s.zarr")["proteins"].index) == ["CD8a", "CD279", "CD4", "CD99"]
    res = runner.invoke(app, ["ingest", str(h5), "--out", str(tmp_path / "t.zarr"), "--protein-aliases",
                              str(tmp_path / "nope.tsv")])
    assert res.exit_code == 2
    assert "protein alias file not found" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["eccite_pbmc_citefuse", "pbmc10k_protein_v3", "bremsc_inhouse_pbmc"])
def test_real_panels(name):
    with h5py.File(shared_h5ad(name), "r") as h:
        names = [str(c) for c in h["obsm/protein"].attrs["column-order"]]
    out, rep = harmonise_protein_names(names)
    assert len(set(out)) == len(names)
    assert set(rep.unknown) <= {"IgG1", "IgG2a"}  # every real target is in the table
