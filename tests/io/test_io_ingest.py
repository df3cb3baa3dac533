"""Ingest writes the paired store: counts unchanged, provenance and QC in uns, readable by mudata."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cite_files import PROTEINS, assert_store_matches, make_cite, stray_files, write_10x_h5, write_h5ad

from omicsclip.io.ingest import ingest
from omicsclip.io.readers import open_input
from omicsclip.io.store import read_store, store_info
from omicsclip.io.summary import format_summary, inspect_store


@pytest.fixture(scope="module")
def cite():
    return make_cite()


@pytest.fixture(scope="module")
def store(cite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    src = write_10x_h5(cite, tmp / "sample.h5")
    return src, ingest([src], tmp / "s.zarr", chunk_cells=16)


def test_round_trip_in_chunks(store, cite):
    src, out = store
    assert_store_matches(out, cite)
    assert stray_files(out.parent) == []


def test_store_is_mudata_readable_and_chunked_by_cells(store, cite):
    import mudata as md
    import zarr

    _, out = store
    m = md.read_zarr(out)
    assert set(m.mod) == {"rna", "prot"}
    assert m.n_obs == len(cite.barcodes)
    assert (m["rna"].X != cite.rna).nnz == 0
    np.testing.assert_array_equal(m["prot"].X.toarray(), cite.prot_kept)
    g = zarr.open_group(str(out / "mod" / "rna" / "X"), mode="r")
    assert g.attrs["encoding-type"] == "csr_matrix"


def test_provenance(store):
    src, out = store
    prov = store_info(out)["uns"]["provenance"]
    inp = prov["inputs"]["input_0"]
    assert inp["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert inp["path"] == str(src.resolve())
    assert int(inp["bytes"]) == src.stat().st_size
    assert prov["format"] == "10x-h5"
    assert prov["version"]
    assert prov["created"]
    assert list(prov["isotypes_removed"]) == ["IgG1_control", "Mouse_IgG2a_isotype"]
    assert prov["options"]["pairing"] == "strict"
    assert int(prov["options"]["chunk_cells"]) == 16


def test_qc_summary_and_feature_totals(store, cite):
    _, out = store
    info = store_info(out)
    qc = info["uns"]["qc"]
    assert int(qc["n_cells"]) == 60
    assert int(qc["n_genes"]) == 40
    assert int(qc["n_proteins"]) == len(PROTEINS)
    assert int(qc["n_genes_zero_counts"]) == 1  # GENE3 is all zero
    assert float(qc["median_counts_rna"]) == float(np.median(np.asarray(cite.rna.sum(axis=1)).ravel()))
    assert int(qc["nnz_rna"]) == cite.rna.nnz
    np.testing.assert_allclose(info["genes"]["total_counts"], np.asarray(cite.rna.sum(axis=0)).ravel())
    np.testing.assert_allclose(info["obs"]["total_counts_prot"], cite.prot_kept.sum(axis=1))


def test_inspect_summary(store):
    _, out = store
    d = inspect_store(out)
    assert (d["n_cells"], d["n_genes"], d["n_proteins"]) == (60, 40, 5)
    assert 0 < d["sparsity_rna"] < 1
    assert d["qc"]["n_cells"] == 60
    text = format_summary(d)
    assert "cells      60" in text
    assert "sha256" in text
    assert "CD19" in text


def test_open_input_on_store(store, cite):
    _, out = store
    with open_input([out]) as s:
        assert s.fmt == "zarr"
        assert s.proteins == PROTEINS
        assert s.genes == cite.genes
        d = s.read()
    assert (d.rna != cite.rna).nnz == 0
    assert d.barcodes == cite.barcodes


def test_min_counts_thresholds_and_overwrite(cite, tmp_path):
    src = write_h5ad(cite, tmp_path / "c.h5ad")
    tot = np.asarray(cite.rna.sum(axis=1)).ravel()
    thr = float(np.sort(tot)[10])
    out = ingest([src], tmp_path / "s.zarr")
    out = ingest([src], out, min_counts_rna=thr, overwrite=True)
    d = read_store(out)
    keep = tot >= thr
    assert d.n_cells == int(keep.sum()) < 60
    assert d.barcodes == [b for b, k in zip(cite.barcodes, keep, strict=True) if k]
    qc = d.uns["qc"]
    assert int(qc["n_cells_below_min_counts_rna"]) == int((~keep).sum())
    assert stray_files(tmp_path) == []


def _mudata(c):
    import anndata as ad
    import mudata as md
    import pandas as pd
    from cite_files import to_anndata

    p = ad.AnnData(X=c.prot.copy(), obs=pd.DataFrame(index=c.barcodes), var=pd.DataFrame(index=c.antibodies))
    return md.MuData({"rna": to_anndata(c, protein="none"), "prot": p})


def test_ingest_source_in_memory_writes_what_the_file_ingest_writes(cite, store, tmp_path):
    """MuData in memory -> the one ingest loop: the same store as its file, provenance describing the object."""
    from omicsclip.io.anndata_input import open_anndata
    from omicsclip.io.ingest import ingest_source, object_inputs

    mdata = _mudata(cite)
    options = {"min_counts_rna": 0.0, "min_counts_prot": 0.0, "chunk_cells": 16}
    with open_anndata(mdata) as src:
        assert src.files == []
        summary = ingest_source(src, tmp_path / "m.zarr", options=options, inputs=object_inputs(mdata))
    assert summary["n_cells"] == len(cite.barcodes)
    assert_store_matches(tmp_path / "m.zarr", cite)
    a, b = read_store(tmp_path / "m.zarr"), read_store(store[1])
    assert a.barcodes == b.barcodes
    assert (a.rna != b.rna).nnz == 0
    np.testing.assert_array_equal(a.prot, b.prot)
    prov = store_info(tmp_path / "m.zarr")["uns"]["provenance"]
    assert prov["format"] == "mudata"
    assert list(prov["isotypes_removed"]) == ["IgG1_control", "Mouse_IgG2a_isotype"]
    inp = prov["inputs"]["input_0"]
    assert inp["object"] == "MuData"
    assert int(inp["n_obs"]) == len(cite.barcodes)
    assert inp["obs_names_sha256"] == hashlib.sha256("".join(f"{b}\n" for b in cite.barcodes).encode()).hexdigest()
    assert set(inp["modalities"]) == {"rna", "prot"}
    assert "path" not in inp  # nothing invented: there is no file
    assert "sha256" not in inp
    assert "in-memory MuData 60 x" in format_summary(inspect_store(tmp_path / "m.zarr"))


def test_ingest_takes_objects_in_memory(cite, tmp_path):
    from cite_files import to_anndata

    from omicsclip.io.ingest import ingest_from_config

    out = ingest_from_config(to_anndata(cite), tmp_path / "a.zarr", {"min_counts_rna": 0, "min_counts_prot": 0,
                                                                    "chunk_cells": 7})
    assert_store_matches(out, cite)
    prov = store_info(out)["uns"]["provenance"]
    assert prov["inputs"]["input_0"]["object"] == "AnnData"
    assert "fmt" not in prov["options"]
    assert int(prov["options"]["chunk_cells"]) == 7
    assert stray_files(tmp_path) == []


def test_empty_in_memory_input_is_named(cite, tmp_path):
    from cite_files import to_anndata

    from omicsclip.errors import InputError

    adata = to_anndata(cite)
    adata.X = adata.X * 0
    with pytest.raises(InputError, match="^the in-memory AnnData: all RNA counts are zero"):
        ingest(adata, tmp_path / "e.zarr")
    assert stray_files(tmp_path) == []
