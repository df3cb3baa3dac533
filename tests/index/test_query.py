"""Query layer: neighbours in every direction, imputation, label transfer, streaming, bad input, real model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import anndata as ad
import faiss
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from omicsclip.config import default_config, load_config
from omicsclip.errors import InputError
from omicsclip.index.engine import QuerySettings
from omicsclip.index.impute import impute, neighbour_weights, vote, voting_weight
from omicsclip.index.matching import match_report
from omicsclip.index.query import query, run_query
from omicsclip.index.query_writers import H5adAppender
from omicsclip.index.reference import ReferenceIndex, write_index_dir
from omicsclip.io.paired import PairedData
from omicsclip.io.synthetic import make_synthetic
from omicsclip.model.preprocess import clr

COLUMNS = ["query_id", "query_modality", "index_modality", "rank", "reference_id", "similarity"]


@pytest.fixture(autouse=True)
def _faiss_threads():
    faiss.omp_set_num_threads(2)


class FakeModel:
    """Stand-in for TrainedModel: features matched by name, log counts through fixed random projections."""

    def __init__(self, genes, proteins, dim=8, seed=0, fingerprint="fake-model", max_missing=0.2,
                 max_missing_protein=0.4):
        rng = np.random.default_rng(seed)
        self.genes, self.proteins = [str(g) for g in genes], [str(p) for p in proteins]
        self.w_rna = rng.normal(size=(len(self.genes), dim)).astype(np.float32)
        self.w_prot = rng.normal(size=(len(self.proteins), dim)).astype(np.float32)
        self.fingerprint, self.embed_dim = fingerprint, dim
        self.config = {"preprocess": {"max_missing_gene_fraction": max_missing}}
        self.state = SimpleNamespace(genes=self.genes, proteins=self.proteins, gene_panels=None, panels=None,
                                     datasets=None, max_missing_gene_fraction=max_missing,
                                     max_missing_protein_fraction=max_missing_protein)
        self.calls = 0

    @staticmethod
    def _align(x, names, model_names):
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        pos = pd.Index([str(n) for n in names]).get_indexer(model_names)
        out = np.zeros((x.shape[0], len(model_names)), np.float32)
        out[:, pos >= 0] = x[:, pos[pos >= 0]]
        return out

    def embed(self, rna=None, prot=None, *, genes=None, proteins=None, batch_size=4096):
        self.calls += 1
        out = {}
        for key, x, names, model_names, w in (("rna", rna, genes, self.genes, self.w_rna),
                                              ("prot", prot, proteins, self.proteins, self.w_prot)):
            if x is not None:
                e = np.log1p(self._align(x, names, model_names)) @ w
                out[key] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A reference index built with a fake model over 400 synthetic cells, and 60 new cells."""
    data = make_synthetic(n_cells=460, n_genes=60, n_proteins=6, n_types=4, seed=0)
    ref, new = data.subset(slice(0, 400)), data.subset(slice(400, 460))
    model = FakeModel(data.gene_names, data.protein_names)
    emb = model.embed(ref.rna, ref.prot, genes=ref.gene_names, proteins=ref.protein_names)
    path = tmp_path_factory.mktemp("ref") / "index"
    write_index_dir(path, embeddings=emb, cell_ids=ref.barcodes, model_fingerprint=model.fingerprint,
                    section=default_config()["index"], protein=clr(ref.prot), protein_names=ref.protein_names,
                    labels=pd.DataFrame({"cell_type": ref.obs["cell_type"].astype(str).to_numpy()}))
    return {"model": model, "index": ReferenceIndex.load(path), "path": path, "ref": ref, "new": new}


def rna_only(d: PairedData) -> PairedData:
    return PairedData(rna=d.rna, prot=None, obs=d.obs, genes=d.genes, proteins=pd.DataFrame())


def prot_only(d: PairedData) -> PairedData:
    return PairedData(rna=None, prot=d.prot, obs=d.obs, genes=pd.DataFrame(), proteins=d.proteins)


def with_genes(d: PairedData, order: np.ndarray, extra: int = 0) -> PairedData:
    """RNA-only copy with genes in ``order`` (positions of the original genes), plus ``extra`` unknown genes."""
    rna = d.rna[:, order]
    names = [d.gene_names[i] for i in order]
    if extra:
        rna = sp.hstack([rna, sp.random(d.n_cells, extra, density=0.3, format="csr", random_state=0) * 10])
        names += [f"EXTRA{i}" for i in range(extra)]
    return PairedData(rna=sp.csr_matrix(rna, dtype=np.float32), prot=None, obs=d.obs,
                      genes=pd.DataFrame(index=names), proteins=pd.DataFrame())


# ---------------------------------------------------------------------------------------- numeric helpers


def test_neighbour_weights_softmax_uniform_and_masked():
    s = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, 0.5]])
    w = neighbour_weights(s, 0.1)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(w[0], np.exp(s[0] / 0.1) / np.exp(s[0] / 0.1).sum())
    np.testing.assert_allclose(neighbour_weights(s, 0.0), 1 / 3)
    wm = neighbour_weights(s, 0.1, valid=np.array([[True, False, True], [False, False, False]]))
    assert wm[0, 1] == 0
    assert np.isclose(wm[0].sum(), 1)
    assert (wm[1] == 0).all()


def test_impute_and_vote_against_loops():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 4)).astype(np.float32)
    pos = rng.integers(0, 30, size=(5, 3))
    w = neighbour_weights(rng.uniform(size=(5, 3)), 0.2)
    expect = np.stack([(w[i, :, None] * ref[pos[i]]).sum(0) for i in range(5)])
    np.testing.assert_allclose(impute(ref, pos, w), expect, rtol=1e-5, atol=1e-6)
    codes = rng.integers(-1, 3, size=30)
    frac = vote(codes, 3, pos, w)
    for i in range(5):
        votes = np.zeros(3)
        for j in range(3):
            if codes[pos[i, j]] >= 0:
                votes[codes[pos[i, j]]] += w[i, j]
        np.testing.assert_allclose(frac[i], votes / votes.sum() if votes.sum() else votes, atol=1e-6)
        np.testing.assert_allclose(voting_weight(codes, pos, w)[i], votes.sum() / w[i].sum(), atol=1e-6)
    # one labelled neighbour among 19 unknown ones: a unanimous vote of a small share of the neighbourhood
    codes = np.array([-1] * 19 + [0])
    pos, w = np.arange(20)[None, :], np.full((1, 20), 0.05)
    assert vote(codes, 1, pos, w)[0, 0] == pytest.approx(1.0)
    assert voting_weight(codes, pos, w)[0] == pytest.approx(0.05)


def test_match_report():
    rep = match_report(["b", "a", "x"], ["a", "b", "c"])
    assert rep["n_shared"] == 2
    assert rep["n_missing"] == 1
    assert rep["n_extra"] == 1
    assert rep["reordered"]
    assert not match_report(["a", "b"], ["a", "b"])["reordered"]


def test_h5ad_appender_round_trip(tmp_path):
    w = H5adAppender(tmp_path / "x.h5ad", ["p1", "p2"], ["confidence"], uns={"note": "x"})
    w.append(["a", "b"], np.array([[1, 2], [3, 4]]), {"confidence": np.array([0.5, 0.25])})
    w.append(["c"], np.array([[5, 6]]), {"confidence": np.array([1.0])})
    w.close()
    a = ad.read_h5ad(tmp_path / "x.h5ad")
    assert list(a.obs_names) == ["a", "b", "c"]
    assert list(a.var_names) == ["p1", "p2"]
    np.testing.assert_array_equal(a.X, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(a.obs["confidence"], [0.5, 0.25, 1.0])
    assert a.uns["note"] == "x"


# ------------------------------------------------------------------------------------------ query results


def test_rna_only_query_all_outputs(world):
    sec = {"k": 5, "impute_k": 5, "temperature": 0.1}
    res = query(rna_only(world["new"]), world["model"], world["index"], section=sec)
    nb = res.neighbours
    assert list(nb.columns) == COLUMNS
    assert set(zip(nb.query_modality, nb.index_modality, strict=True)) == {("rna", "rna"), ("rna", "prot")}
    assert len(nb) == 60 * 2 * 5
    assert set(nb["rank"]) == set(range(1, 6))
    for _, g in nb.groupby(["query_id", "index_modality"]):
        assert (np.diff(g.sort_values("rank").similarity.to_numpy()) <= 1e-6).all()
    # the imputation is the softmax-weighted mean of the transfer neighbours' CLR protein
    imp = res.imputed
    assert imp.shape == (60, 6)
    assert list(imp.var_names) == world["ref"].protein_names
    assert list(imp.obs_names) == world["new"].barcodes
    ref_prot = clr(world["ref"].prot)
    pos_of = {c: i for i, c in enumerate(world["ref"].barcodes)}
    for qid in world["new"].barcodes[:5]:
        g = nb[(nb.query_id == qid) & (nb.index_modality == "rna")].sort_values("rank")
        w = neighbour_weights(g.similarity.to_numpy()[None], 0.1)[0]
        expect = (w[:, None] * ref_prot[[pos_of[r] for r in g.reference_id]]).sum(0)
        np.testing.assert_allclose(imp[qid].X.ravel(), expect, rtol=1e-4, atol=1e-5)
    assert ((imp.obs.confidence >= -1) & (imp.obs.confidence <= 1.0001)).all()
    lab = res.labels
    frac_cols = [c for c in lab.columns if c.startswith("cell_type_fraction_")]
    np.testing.assert_allclose(lab[frac_cols].sum(1), 1.0, atol=1e-5)
    assert (lab.cell_type_vote_fraction == lab[frac_cols].max(1)).all()
    assert res.summary["imputed_protein"]
    assert res.summary["transfer_direction"] == "rna->rna"


def test_query_reports_progress_without_a_terminal(world, monkeypatch, caplog):
    monkeypatch.setenv("OMICSCLIP_PROGRESS_SECONDS", "0")
    caplog.set_level("INFO", logger="omicsclip.index.query")
    query(rna_only(world["new"]), world["model"], world["index"], section={"chunk_cells": 25})
    lines = [r.getMessage() for r in caplog.records if r.name == "omicsclip.index.query"]
    assert [line.split(" cells ")[0] for line in lines[:3]] == ["query: 25/60", "query: 50/60", "query: 60/60"]
    assert all("cells/s" in line and "ETA" in line for line in lines[:3])
    assert lines[3].startswith("query: finished 60/60 cells (100%) in ")


def test_transfer_from_cross_uses_protein_index(world):
    res = query(rna_only(world["new"]), world["model"], world["index"],
                section={"k": 4, "impute_k": 4, "transfer_from": "cross"})
    assert res.summary["transfer_direction"] == "rna->prot"


def test_protein_only_and_paired_queries(world):
    res = query(prot_only(world["new"]), world["model"], world["index"], k=3)
    pairs = set(zip(res.neighbours.query_modality, res.neighbours.index_modality, strict=True))
    assert pairs == {("prot", "rna"), ("prot", "prot")}
    assert res.imputed is None
    assert res.labels is not None
    both = query(world["new"], world["model"], world["index"], k=3)
    assert len(set(zip(both.neighbours.query_modality, both.neighbours.index_modality, strict=True))) == 4
    assert both.imputed is None  # measured protein exists: nothing to impute


def test_genes_reordered_extra_and_missing(world):
    new = world["new"]
    g = len(new.gene_names)
    base = query(rna_only(new), world["model"], world["index"], k=5).neighbours
    perm = np.random.default_rng(1).permutation(g)
    shuffled = query(with_genes(new, perm, extra=7), world["model"], world["index"], k=5)
    pd.testing.assert_frame_equal(shuffled.neighbours, base)
    rep = shuffled.summary["feature_matching"]["rna"]
    assert rep["reordered"]
    assert rep["n_extra"] == 7
    assert rep["n_missing"] == 0
    few_missing = query(with_genes(new, perm[: int(g * 0.9)]), world["model"], world["index"], k=5)
    assert few_missing.summary["feature_matching"]["rna"]["n_missing"] == g - int(g * 0.9)
    assert len(few_missing.neighbours) == len(base)
    with pytest.raises(InputError, match=r"lacks 30 of the model's 60 genes \(50% > max_missing_gene_fraction"):
        query(with_genes(new, perm[:30]), world["model"], world["index"])
    ids = pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(g)])
    by_id = PairedData(rna=new.rna, prot=None, obs=new.obs, genes=ids, proteins=pd.DataFrame())
    with pytest.raises(InputError, match=r"lacks 60 of the model's 60 genes .*; one side names genes by Ensembl ID"):
        query(by_id, world["model"], world["index"])  # the refusal says why, not "train with --genes-from"


def test_protein_panel_partial_overlap_and_none(world):
    new = world["new"]
    def panel(keep):
        return PairedData(rna=None, prot=new.prot[:, keep], obs=new.obs, genes=pd.DataFrame(),
                          proteins=pd.DataFrame(index=[new.protein_names[i] for i in keep]))

    res = query(panel([0, 2, 3, 5]), world["model"], world["index"], k=3)
    assert res.summary["feature_matching"]["prot"]["n_missing"] == 2
    # 3 of 6 missing: past max_missing_protein_fraction (0.4), refused before any cell is embedded
    calls = world["model"].calls
    with pytest.raises(InputError, match=r"lacks 3 of the model's 6 proteins \(50% > max_missing_protein_fraction=0.4\)"):
        query(panel([0, 2, 3]), world["model"], world["index"], k=3)
    assert world["model"].calls == calls
    other = PairedData(rna=None, prot=new.prot, obs=new.obs, genes=pd.DataFrame(),
                       proteins=pd.DataFrame(index=[f"X{i}" for i in range(6)]))
    with pytest.raises(InputError, match="shares no protein with the model"):
        query(other, world["model"], world["index"])


def test_empty_input_wrong_model_and_wrong_dimension(world):
    with pytest.raises(InputError, match="no cells"):
        query(rna_only(world["new"]).subset(slice(0, 0)), world["model"], world["index"])
    other = FakeModel(world["model"].genes, world["model"].proteins, fingerprint="another")
    with pytest.raises(InputError, match="built with model fake-model"):
        query(rna_only(world["new"]), other, world["index"])
    with pytest.raises(InputError, match="built with model fake-model"):
        query(rna_only(world["new"]), other, world["path"])
    wide = FakeModel(world["model"].genes, world["model"].proteins, dim=12)
    with pytest.raises(InputError, match="index dimension 8 differs from the model's embedding dimension 12"):
        query(rna_only(world["new"]), wide, world["index"])


def test_unlabelled_reference_cells_do_not_vote(world, tmp_path):
    from omicsclip.conventions import is_unlabelled
    from omicsclip.index.engine import QueryEngine

    ref, model = world["ref"], world["model"]
    labels = ref.obs["cell_type"].astype(str).to_numpy().copy()
    blanks = ["", "nan", "None", "NA", "<NA>", " na "]
    labels[: len(blanks) * 10] = np.repeat(blanks, 10)
    emb = model.embed(ref.rna, ref.prot, genes=ref.gene_names, proteins=ref.protein_names)
    write_index_dir(tmp_path / "i", embeddings=emb, cell_ids=ref.barcodes, model_fingerprint=model.fingerprint,
                    section=default_config()["index"], labels=pd.DataFrame({"cell_type": labels}))
    engine = QueryEngine(model, ReferenceIndex.load(tmp_path / "i"), QuerySettings())
    assert engine.label_classes["cell_type"] == sorted({v for v in labels if not is_unlabelled(v)})
    res = query(rna_only(world["new"]), model, tmp_path / "i", k=5)
    assert not res.labels["cell_type"].map(is_unlabelled).any()


def test_chunking_does_not_change_results(world):
    one = query(rna_only(world["new"]), world["model"], world["index"], section={"chunk_cells": 1000})
    many = query(rna_only(world["new"]), world["model"], world["index"], section={"chunk_cells": 7})
    pd.testing.assert_frame_equal(one.neighbours, many.neighbours)
    pd.testing.assert_frame_equal(one.labels, many.labels)
    np.testing.assert_allclose(one.imputed.X, many.imputed.X, atol=1e-5)


def test_query_settings_validation():
    assert QuerySettings.from_section({"k": 3, "device": "cpu"}, k=7).k == 7
    with pytest.raises(InputError, match="transfer_from"):
        QuerySettings.from_section({"transfer_from": "joint"})


# -------------------------------------------------------------------------------------------- run_query


def test_run_query_writes_the_same_as_query(world, tmp_path):
    sec = {"k": 4, "chunk_cells": 16}
    out = tmp_path / "res"
    summary = run_query(rna_only(world["new"]), world["model"], world["index"], out, section=sec)
    mem = query(rna_only(world["new"]), world["model"], world["index"], section=sec)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["neighbours.parquet", "neighbours.tsv", "imputed_protein.h5ad", "labels.tsv", "mapping.tsv",
         "summary.json"])
    pq = pd.read_parquet(out / "neighbours.parquet")
    pd.testing.assert_frame_equal(pq, mem.neighbours, check_dtype=False)
    tsv = pd.read_csv(out / "neighbours.tsv", sep="\t", dtype={"query_id": str, "reference_id": str})
    assert list(tsv.columns) == COLUMNS
    assert len(tsv) == len(pq)
    np.testing.assert_allclose(tsv.similarity, pq.similarity, atol=1e-5)
    imp = ad.read_h5ad(out / "imputed_protein.h5ad")
    np.testing.assert_allclose(imp.X, mem.imputed.X)
    np.testing.assert_allclose(imp.obs.confidence, mem.imputed.obs.confidence)
    labels = pd.read_csv(out / "labels.tsv", sep="\t")
    assert (labels.cell_type.to_numpy() == mem.labels.cell_type.to_numpy()).all()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["n_query_cells"] == 60
    assert summary["n_neighbour_rows"] == len(pq)


def test_run_query_failure_leaves_nothing(world, tmp_path):
    class Failing(FakeModel):
        def embed(self, *a, **kw):
            if self.calls >= 1:
                raise InputError("boom on the second chunk")
            return super().embed(*a, **kw)

    failing = Failing(world["model"].genes, world["model"].proteins)
    with pytest.raises(InputError, match="boom"):
        run_query(rna_only(world["new"]), failing, world["index"], tmp_path / "res", section={"chunk_cells": 20})
    assert list(tmp_path.iterdir()) == []
    run_query(rna_only(world["new"]), world["model"], world["index"], tmp_path / "res")
    with pytest.raises(InputError, match="already exists"):
        run_query(rna_only(world["new"]), world["model"], world["index"], tmp_path / "res")


# ------------------------------------------------------------------------------- with the real trained model

TINY = ["preprocess.n_hvg=40", "model.rna_hidden=[32]", "model.prot_hidden=[16]", "model.embed_dim=8",
        "train.batch_size=64", "train.epochs=3", "train.warmup_steps=4", "train.num_threads=1",
        "train.checkpoint_every=50", "train.device=cpu"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from omicsclip.index.from_embeddings import index_embeddings
    from omicsclip.io.store import write_store
    from omicsclip.model.embed import embed_store
    from omicsclip.train.run import train_model

    tmp = tmp_path_factory.mktemp("real")
    data = make_synthetic(n_cells=360, n_genes=80, n_proteins=6, n_types=4, seed=0)
    write_store(data, tmp / "cells.zarr")
    cfg = load_config(None, TINY)
    train_model(tmp / "cells.zarr", tmp / "model", cfg)
    embed_store(tmp / "cells.zarr", tmp / "model", tmp / "emb.zarr")
    index_embeddings(tmp / "emb.zarr", tmp / "index", {**cfg["index"], "splits": ["train", "val"]})
    return {"tmp": tmp, "data": data, "cfg": cfg}


def test_real_model_index_and_query(real):
    from omicsclip.io.split import read_split
    from omicsclip.model.modelio import load_model

    tmp, data = real["tmp"], real["data"]
    model = load_model(tmp / "model")
    ref = ReferenceIndex.load(tmp / "index", model_fingerprint=model.fingerprint)
    split = read_split(tmp / "model" / "split.tsv")
    in_ref = split[split.isin(["train", "val"])].index
    assert ref.n == len(in_ref)
    assert set(ref.cell_ids) == set(in_ref)
    pos = pd.Index(data.barcodes).get_indexer(ref.cell_ids)
    np.testing.assert_allclose(np.asarray(ref.protein), clr(data.prot[pos]), atol=1e-5)
    assert ref.protein_names == model.proteins
    assert ref.labels.columns.tolist() == ["cell_type"]
    test = data.subset(np.flatnonzero(split.reindex(data.barcodes).to_numpy() == "test"))
    res = query(rna_only(test), model, ref, k=5)
    assert len(res.neighbours) == test.n_cells * 2 * 5
    assert res.imputed.shape == (test.n_cells, 6)
    # even a 3-epoch model on tiny data places most test cells next to cells of their own type
    agree = (res.labels.cell_type.to_numpy() == test.obs.cell_type.astype(str).to_numpy()).mean()
    assert agree > 0.5


def test_real_index_refuses_other_model(real, tmp_path):
    from omicsclip.train.run import train_model

    cfg = load_config(None, TINY + ["train.seed=7", "train.epochs=1"])
    train_model(real["tmp"] / "cells.zarr", tmp_path / "other", cfg)
    with pytest.raises(InputError, match="index was built with model"):
        query(rna_only(real["data"].subset(slice(0, 10))), tmp_path / "other", real["tmp"] / "index")


def test_index_with_missing_model_folder_is_refused_or_warned(real, caplog):
    import shutil

    from omicsclip.index.from_embeddings import index_embeddings

    tmp, cfg = real["tmp"], real["cfg"]
    with pytest.raises(InputError, match="model folder not found"):
        index_embeddings(tmp / "emb.zarr", tmp / "index_x", cfg["index"], model_dir=tmp / "no_model")
    assert not (tmp / "index_x").exists()
    # the model recorded in the embeddings is gone: say that the store's panel is used, don't stay silent
    moved = tmp / "model_moved"
    shutil.move(tmp / "model", moved)
    try:
        index_embeddings(tmp / "emb.zarr", tmp / "index_y", cfg["index"])
    finally:
        shutil.move(moved, tmp / "model")
    assert "is gone" in caplog.text
    assert (tmp / "index_y" / "meta.json").exists()


def test_index_leaves_no_spilled_protein_when_it_fails(real, tmp_path, monkeypatch):
    """The reference protein waits on disk beside the index while it is built; an error (or Ctrl-C) while it is
    being computed removes it too."""
    import omicsclip.index.from_embeddings as fe

    real_reference_protein = fe.reference_protein

    def fails_after_writing(*args, **kwargs):
        real_reference_protein(*args, **kwargs)
        assert kwargs["out"].exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(fe, "reference_protein", fails_after_writing)
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        fe.index_embeddings(real["tmp"] / "emb.zarr", out, real["cfg"]["index"])
    assert list(tmp_path.iterdir()) == []


def test_index_overwrite_never_deletes_the_recorded_store(tmp_path):
    from omicsclip.index.from_embeddings import index_embeddings
    from omicsclip.io.store import write_store
    from omicsclip.model.embed import embed_store
    from omicsclip.train.run import train_model

    data = make_synthetic(n_cells=200, n_genes=60, n_proteins=5, n_types=3, seed=1)
    (tmp_path / "d").mkdir()
    write_store(data, tmp_path / "d" / "s.zarr")
    cfg = load_config(None, TINY + ["train.epochs=1"])
    with pytest.raises(InputError, match="would delete the input"):  # train refuses before training
        train_model(tmp_path / "d" / "s.zarr", tmp_path / "d", cfg, overwrite=True)
    train_model(tmp_path / "d" / "s.zarr", tmp_path / "m", cfg)
    embed_store(tmp_path / "d" / "s.zarr", tmp_path / "m", tmp_path / "e.zarr")
    with pytest.raises(InputError, match="would delete the input"):  # the store recorded in e.zarr
        index_embeddings(tmp_path / "e.zarr", tmp_path / "d", cfg["index"], overwrite=True)
    assert (tmp_path / "d" / "s.zarr").exists()
