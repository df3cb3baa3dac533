"""Model folder API (load_model / TrainedModel.embed) and `embed_store` (AnnData zarr with three embeddings)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from conftest import TINY, tiny_store

from omicsclip.config import load_config
from omicsclip.errors import InputError
from omicsclip.io.store import read_store
from omicsclip.model.embed import OBSM_JOINT, OBSM_PROT, OBSM_RNA, embed_store, open_embeddings
from omicsclip.model.modelio import joint_embedding, load_model
from omicsclip.train.run import train_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    store = tiny_store(root / "cells.zarr")
    model = train_model(store, root / "model", load_config(None, TINY + ["train.epochs=2"]))
    return store, model, read_store(store)


def test_embed_contract(setup):
    _, model_dir, d = setup
    m = load_model(model_dir)
    assert len(m.fingerprint) == 64
    assert m.genes
    assert len(m.proteins) == 6
    assert m.config["model"]["embed_dim"] == 8
    width = 8 * m.config["model"]["members"]  # an ensemble's members sit side by side
    assert m.embed_dim == width
    e = m.embed(d.rna, d.prot, genes=d.gene_names, proteins=d.protein_names)
    assert set(e) == {"rna", "prot"}
    for x in e.values():
        assert x.dtype == np.float32
        assert x.shape == (d.n_cells, width)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert m.last_report["rna"]["n_missing"] == 0
    dense = m.embed(rna=d.rna.toarray(), genes=d.gene_names, batch_size=7)  # dense input, small batches
    np.testing.assert_allclose(dense["rna"], e["rna"], atol=1e-6)
    only_prot = m.embed(prot=d.prot, proteins=d.protein_names)
    assert set(only_prot) == {"prot"}


def test_embed_matches_features_by_name(setup):
    _, model_dir, d = setup
    m = load_model(model_dir)
    ref = m.embed(d.rna, d.prot, genes=d.gene_names, proteins=d.protein_names)
    rng = np.random.default_rng(0)
    go, po = rng.permutation(len(d.gene_names)), rng.permutation(len(d.protein_names))
    got = m.embed(d.rna[:, go], d.prot[:, po], genes=[d.gene_names[i] for i in go],
                  proteins=[d.protein_names[i] for i in po])
    np.testing.assert_allclose(got["rna"], ref["rna"], atol=1e-6)
    np.testing.assert_allclose(got["prot"], ref["prot"], atol=1e-6)


def test_missing_features_reported_or_refused(setup, caplog):
    _, model_dir, d = setup
    m = load_model(model_dir)
    drop = set(m.genes[:2])  # 5% of 40 model genes
    keep = [i for i, g in enumerate(d.gene_names) if g not in drop]
    e = m.embed(d.rna[:, keep], genes=[d.gene_names[i] for i in keep])
    assert m.last_report["rna"]["n_missing"] == 2
    assert "lacks 2" in caplog.text
    assert np.isfinite(e["rna"]).all()
    drop = set(m.genes[:20])
    keep = [i for i, g in enumerate(d.gene_names) if g not in drop]
    with pytest.raises(InputError, match="max_missing_gene_fraction"):
        m.embed(d.rna[:, keep], genes=[d.gene_names[i] for i in keep])
    with pytest.raises(InputError, match="shares no protein"):
        m.embed(prot=d.prot, proteins=[f"X{i}" for i in range(6)])
    with pytest.raises(InputError):
        m.embed()


@pytest.mark.parametrize("suffix", [".zarr", ".h5ad"])
def test_open_embeddings_reads_lazily_what_anndata_reads(setup, tmp_path, suffix):
    """The one embeddings reader: obs, fingerprint, every embedding (all rows or some), other obsm arrays."""
    store, model_dir, _ = setup
    a = ad.read_zarr(embed_store(store, model_dir, tmp_path / "emb.zarr"))
    a.obsm["X_pca_rna"] = np.arange(a.n_obs * 3, dtype=np.float32).reshape(a.n_obs, 3)
    path = tmp_path / f"emb2{suffix}"
    a.write_zarr(path) if suffix == ".zarr" else a.write_h5ad(path)
    emb = open_embeddings(path)
    assert emb.modalities == ["rna", "prot", "joint"]
    assert {OBSM_RNA, "X_pca_rna"} <= set(emb.obsm_keys)
    assert list(emb.obs.index) == list(a.obs_names)
    assert emb.fingerprint == a.uns["omicsclip"]["model_fingerprint"]
    rows = np.array([0, 5, 17])
    np.testing.assert_array_equal(emb.matrix("prot"), a.obsm[OBSM_PROT])
    np.testing.assert_array_equal(emb.matrix("rna", rows), a.obsm[OBSM_RNA][rows])
    np.testing.assert_array_equal(emb.obsm("X_pca_rna", slice(2, 4)), a.obsm["X_pca_rna"][2:4])
    with pytest.raises(InputError, match="no obsm"):
        emb.obsm("X_umap")


def test_open_embeddings_refuses_bad_files_in_one_line(setup, tmp_path):
    store, model_dir, _ = setup
    with pytest.raises(InputError, match="embeddings not found"):
        open_embeddings(tmp_path / "missing.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(InputError, match="cannot read as embeddings"):
        open_embeddings(tmp_path / "junk.zarr")
    a = ad.read_zarr(embed_store(store, model_dir, tmp_path / "emb.zarr"))
    a.obsm = {}
    a.write_zarr(tmp_path / "bare.zarr")
    with pytest.raises(InputError, match="no obsm key"):
        open_embeddings(tmp_path / "bare.zarr")
    a.obsm[OBSM_RNA] = np.zeros((a.n_obs, 4), np.float32)
    a.write_zarr(tmp_path / "rna_only.zarr")
    with pytest.raises(InputError, match="prot embedding"):
        open_embeddings(tmp_path / "rna_only.zarr").require("rna", "prot")


def test_joint_embedding_is_normalised_mean():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    j = joint_embedding(a, b)
    np.testing.assert_allclose(j[0], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(j[1], [0.0, 1.0])


def test_embed_store_writes_anndata(setup, tmp_path):
    store, model_dir, d = setup
    out = embed_store(store, model_dir, tmp_path / "emb.zarr", batch_size=50, chunk_cells=70)
    a = ad.read_zarr(out)
    assert a.n_obs == d.n_cells
    assert list(a.obs_names) == d.barcodes
    assert {OBSM_RNA, OBSM_PROT, OBSM_JOINT} <= set(a.obsm)
    m = load_model(model_dir)
    e = m.embed(d.rna, d.prot, genes=d.gene_names, proteins=d.protein_names)
    np.testing.assert_allclose(a.obsm[OBSM_RNA], e["rna"], atol=1e-6)
    np.testing.assert_allclose(a.obsm[OBSM_JOINT], joint_embedding(e["rna"], e["prot"]), atol=1e-6)
    assert a.uns["omicsclip"]["model_fingerprint"] == m.fingerprint
    assert (a.obs["split"].astype(str).to_numpy() == m.split.reindex(a.obs_names).to_numpy()).all()
    assert "cell_type" in a.obs
    assert json.loads(a.uns["omicsclip"]["feature_report_json"])["rna"]["n_missing"] == 0
    with pytest.raises(InputError, match="already exists"):
        embed_store(store, model_dir, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left


def test_load_model_refuses_bad_folders(setup, tmp_path):
    _, model_dir, _ = setup
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="fingerprint"):
        load_model(bad)
    (bad / "model.json").unlink()
    with pytest.raises(InputError, match="not a complete"):
        load_model(bad)


def test_projection_model_embeds_like_validation(tmp_path):
    """With n_pcs the encoder input is computed from non-zeros; missing genes still zero-filled and reported."""
    store = tiny_store(tmp_path / "s.zarr", n_cells=200)
    model_dir = train_model(store, tmp_path / "m", load_config(None, TINY + ["train.epochs=1", "preprocess.n_pcs=6"]))
    m = load_model(model_dir)
    # 6 principal axes, the protein genes (preprocess.protein_genes per protein, overlaps once) and depth
    assert 0 < len(m.state.protein_genes) <= 10 * len(m.proteins)
    assert m.model.rna.n_in == 6 + len(m.state.protein_genes) + 1
    d = read_store(store)
    full = m.embed(rna=d.rna, genes=d.gene_names)["rna"]
    drop = m.genes[0]
    keep = [i for i, g in enumerate(d.gene_names) if g != drop]
    part = m.embed(rna=d.rna[:, keep], genes=[d.gene_names[i] for i in keep])["rna"]
    assert m.last_report["rna"]["missing"] == [drop]
    assert np.isfinite(part).all()
    assert not np.allclose(part, full)


def test_embed_reports_progress_without_a_terminal(setup, tmp_path, monkeypatch, caplog):
    store, model_dir, _ = setup
    monkeypatch.setenv("OMICSCLIP_PROGRESS_SECONDS", "0")
    caplog.set_level("INFO", logger="omicsclip.model.embed")
    embed_store(store, model_dir, tmp_path / "e.zarr", chunk_cells=128)
    lines = [r.getMessage() for r in caplog.records if r.name == "omicsclip.model.embed"]
    assert [line.split(" cells ")[0] for line in lines[:3]] == ["embed: 128/300", "embed: 256/300", "embed: 300/300"]
    assert all("cells/s" in line and "ETA" in line for line in lines[:3])
    assert lines[3].startswith("embed: finished 300/300 cells (100%) in ")
