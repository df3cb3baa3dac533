"""Out-of-reference mapping score, ignored labels in label transfer, reference protein with unmeasured entries."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import faiss
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from omicsclip.config import default_config
from omicsclip.index.faiss_index import IndexParams, build_index
from omicsclip.index.impute import impute
from omicsclip.index.mapping_score import MappingCalibration, leave_one_out, neighbour_statistic
from omicsclip.index.query import query, run_query
from omicsclip.index.reference import ReferenceIndex, write_index_dir
from omicsclip.index.refmeta import MAPPING, META
from omicsclip.index.refprotein import reference_protein
from omicsclip.io.paired import PairedData
from omicsclip.io.synthetic import make_synthetic
from omicsclip.model.preprocess import clr


@pytest.fixture(autouse=True)
def _faiss_threads():
    faiss.omp_set_num_threads(2)


class PcaModel:
    """Stand-in for TrainedModel fitted on reference cells: RNA on its top principal axes, protein projected.

    RNA: log-normalised, standardised with the fitting cells' statistics, projected on their top ``dim``
    principal axes (what separates the types it saw); protein: CLR through a fixed random projection. Both
    L2-normalised.
    """

    def __init__(self, data: PairedData, dim=8, seed=0):
        self.genes, self.proteins = list(data.gene_names), list(data.protein_names)
        z = self._lognorm(data.rna)
        self.mu, self.sd = z.mean(axis=0), z.std(axis=0) + 1e-3
        self.axes = np.linalg.svd((z - self.mu) / self.sd, full_matrices=False)[2][:dim].T
        self.w_prot = np.random.default_rng(seed).normal(size=(len(self.proteins), dim))
        self.fingerprint, self.embed_dim = "pca-model", dim
        self.config = {"preprocess": {"max_missing_gene_fraction": 0.2}}
        self.state = SimpleNamespace(genes=self.genes, proteins=self.proteins, gene_panels=None, panels=None,
                                     datasets=None, max_missing_gene_fraction=0.2, max_missing_protein_fraction=0.4)

    @staticmethod
    def _lognorm(x):
        x = x.toarray() if sp.issparse(x) else np.asarray(x, np.float64)
        return np.log1p(x / np.maximum(x.sum(axis=1, keepdims=True), 1) * 1e4)

    def embed(self, rna=None, prot=None, *, genes=None, proteins=None, batch_size=4096):
        out = {}
        if rna is not None:
            out["rna"] = ((self._lognorm(rna) - self.mu) / self.sd) @ self.axes
        if prot is not None:
            out["prot"] = clr(np.asarray(prot)) @ self.w_prot
        return {k: (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32) for k, e in out.items()}


def _rna_only(data: PairedData) -> PairedData:
    return PairedData(rna=data.rna, prot=None, obs=data.obs, genes=data.genes, proteins=pd.DataFrame())


def _reference(data: PairedData, model: PcaModel, path, *, labels=None, protein=None, **section):
    emb = model.embed(data.rna, data.prot)
    labels = data.obs["cell_type"].astype(str).to_numpy() if labels is None else labels
    write_index_dir(path, embeddings=emb, cell_ids=data.barcodes, model_fingerprint=model.fingerprint,
                    section={**default_config()["index"], "use_gpu": False, **section},
                    protein=clr(data.prot) if protein is None else protein, protein_names=list(data.proteins.index),
                    labels=pd.DataFrame({"cell_type": labels}))
    return ReferenceIndex.load(path, use_gpu=False)


# ------------------------------------------------------------------------------------ the score itself


def test_score_is_the_conformal_p_value():
    null = np.sort(np.random.default_rng(0).normal(size=999)).astype(np.float32)
    cal = MappingCalibration(k=5, null={"rna": null})
    s = np.array([-np.inf, null[0] - 1, null[499], null[-1] + 1, np.nan])
    got = cal.score("rna", s)
    plain = [(1 + (null <= v).sum()) / (len(null) + 1) if np.isfinite(v) else np.nan for v in s]
    np.testing.assert_allclose(got, plain, rtol=1e-6)
    assert got[1] == pytest.approx(1 / 1000)
    assert got[3] == 1.0
    assert np.isnan(got[4])
    # exchangeable with the reference sample: about uniform, P(score <= alpha) <= alpha
    fresh = cal.score("rna", np.random.default_rng(1).normal(size=20_000))
    assert abs(np.mean(fresh <= 0.05) - 0.05) < 0.01
    assert abs(np.median(fresh) - 0.5) < 0.03


def test_leave_one_out_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[7] = x[3]  # a duplicate: the cell, not its twin, is dropped
    rows = np.array([0, 3, 7, 150, 299])
    got = leave_one_out(build_index(x, IndexParams(kind="flat"), use_gpu=False), x, rows, 4)
    sims = x[rows] @ x.T
    sims[np.arange(len(rows)), rows] = -np.inf
    plain = np.sort(np.sort(sims, axis=1)[:, ::-1][:, 3])
    np.testing.assert_allclose(got, plain, atol=1e-5)


def test_neighbour_statistic_skips_missing_neighbours():
    sims = np.array([[0.9, 0.7, -1.0], [0.3, 0.2, 0.1], [0.5, 0.4, 0.2]])
    valid = np.array([[True, True, False], [False, False, False], [True, True, True]])
    got = neighbour_statistic(sims, valid)
    assert got[0] == pytest.approx(0.7)
    assert got[2] == pytest.approx(0.2)
    assert np.isnan(got[1])


# ------------------------------------------------------------------------------- out-of-reference cells


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """A reference of three of four synthetic types; other cells of all four as queries."""
    data = make_synthetic(n_cells=1200, n_genes=80, n_proteins=6, n_types=4, seed=0)
    new = data.subset(slice(800, 1200))  # other cells of the same types (not reference cells)
    gone = "CD14 Mono"  # distinct from the lymphocytes in this synthetic world (seed 0)
    keep = np.flatnonzero(data.obs["cell_type"].astype(str).to_numpy()[:800] != gone)
    ref = data.subset(keep)
    model = PcaModel(ref)  # like a model trained on the reference cells only
    index = _reference(ref, model, tmp_path_factory.mktemp("ood") / "index")
    return {"model": model, "index": index, "new": new, "gone": gone, "ref": ref}


def test_a_type_left_out_of_the_reference_scores_low(held_out):
    new = held_out["new"]
    res = query(_rna_only(new), held_out["model"], held_out["index"], section={"k": 5})
    cells = res.cells
    assert list(cells.columns) == ["query_id", "query_modality", "mapping_similarity", "mapping_score",
                                   "out_of_reference"]
    assert cells["query_id"].tolist() == list(new.barcodes)
    score = cells["mapping_score"].to_numpy()
    assert ((score > 0) & (score <= 1)).all()
    out = new.obs["cell_type"].astype(str).to_numpy() == held_out["gone"]
    assert roc_auc_score(out, 1 - score) > 0.85  # 0.95 when written
    # cells of the reference's types look like reference cells: scores spread over (0, 1], few flagged
    assert 0.25 < np.median(score[~out]) < 0.75
    assert cells["out_of_reference"].to_numpy()[~out].mean() < 0.1
    assert np.median(score[out]) < np.quantile(score[~out], 0.25)
    assert res.summary["mapping"]["k"] == 50
    assert res.summary["mapping"]["ood_alpha"] == 0.01


def test_mapping_file_and_flag_follow_ood_alpha(held_out, tmp_path):
    new = held_out["new"]
    summary = run_query(_rna_only(new), held_out["model"], held_out["index"], tmp_path / "res",
                        section={"k": 5, "chunk_cells": 64, "ood_alpha": 0.2})
    cells = pd.read_csv(tmp_path / "res" / "mapping.tsv", sep="\t")
    mem = query(_rna_only(new), held_out["model"], held_out["index"], section={"k": 5, "ood_alpha": 0.2}).cells
    np.testing.assert_allclose(cells["mapping_score"], mem["mapping_score"], rtol=1e-5)
    assert (cells["out_of_reference"] == (cells["mapping_score"] <= 0.2)).all()
    assert summary["mapping"]["n_out_of_reference"] == int(cells["out_of_reference"].sum())
    assert "mapping.tsv" in summary["files"]


def test_calibration_is_stored_and_sampled(held_out, tmp_path):
    meta = json.loads((held_out["index"].path / META).read_text())
    assert meta["mapping"]["k"] == 50
    assert meta["mapping"]["modalities"] == ["rna", "prot"]
    assert meta["mapping"]["n_sample"] == held_out["index"].n
    assert MAPPING in meta["files"]
    small = _reference(held_out["ref"], held_out["model"], tmp_path / "small", mapping_cells=50, mapping_k=3)
    assert small.mapping.k == 3
    assert small.meta["mapping"]["n_sample"] == 50
    assert all(np.all(np.diff(v) >= 0) for v in small.mapping.null.values())


def test_index_without_calibration_still_queries(held_out, tmp_path, caplog):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(held_out["index"].path, old)
    meta = json.loads((old / META).read_text())
    del meta["mapping"], meta["files"][MAPPING]
    (old / META).write_text(json.dumps(meta))
    (old / MAPPING).unlink()
    ref = ReferenceIndex.load(old, use_gpu=False)
    assert ref.mapping is None
    with caplog.at_level(logging.WARNING, logger="omicsclip.index.engine"):
        res = query(_rna_only(held_out["new"]), held_out["model"], ref, section={"k": 5, "chunk_cells": 100})
    assert res.cells is None
    assert res.summary["mapping"] is None
    assert sum("mapping-score calibration" in r.message for r in caplog.records) == 1  # once, not per chunk
    summary = run_query(_rna_only(held_out["new"]), held_out["model"], ref, tmp_path / "res")
    assert "mapping.tsv" not in summary["files"]


def test_a_listed_calibration_file_must_be_there(held_out, tmp_path):
    import shutil

    from omicsclip.errors import InputError

    bad = tmp_path / "bad"
    shutil.copytree(held_out["index"].path, bad)
    meta = json.loads((bad / META).read_text())
    del meta["files"][MAPPING]
    (bad / META).write_text(json.dumps(meta))
    with pytest.raises(InputError, match=MAPPING):
        ReferenceIndex.load(bad, use_gpu=False)


# ----------------------------------------------------------------------------------------- ignored labels


def test_ignored_labels_are_never_transferred(held_out, tmp_path):
    ref, new = held_out["ref"], held_out["new"]
    labels = ref.obs["cell_type"].astype(str).to_numpy().copy()
    labels[labels == "CD8 T"] = "Unknown"  # a whole type labelled with the default evaluate.ignore_labels
    index = _reference(ref, held_out["model"], tmp_path / "index", labels=labels)
    res = query(_rna_only(new), held_out["model"], index, section={"k": 5})
    got = res.labels["cell_type"].to_numpy()
    assert "Unknown" not in set(got)  # ignored whatever its case
    assert "cell_type_fraction_Unknown" not in res.labels.columns
    # a cell all of whose neighbours are ignored gets no label; imputation still uses those neighbours
    truth = new.obs["cell_type"].astype(str).to_numpy()
    none = got == ""
    assert none.any()
    assert (truth[none] == "CD8 T").mean() > 0.8  # the relabelled type's cells
    assert (res.labels["cell_type_vote_fraction"].to_numpy()[none] == 0).all()
    # how much of its neighbourhood voted: nothing for those cells, little for the relabelled type's cells
    share = res.labels["cell_type_voting_weight"].to_numpy()
    assert ((share >= 0) & (share <= 1 + 1e-6)).all()
    assert (share[none] == 0).all()
    assert share[truth == "CD8 T"].mean() < 0.5 < share[truth != "CD8 T"].mean()
    assert np.isfinite(res.imputed.X[none]).all()
    # an explicit empty ignore list transfers them as a class
    res = query(_rna_only(new), held_out["model"], index, section={"k": 5}, ignore_labels=[])
    assert "Unknown" in set(res.labels["cell_type"])


def test_cells_without_a_label_are_looked_past(held_out, tmp_path):
    """Reference cells with no label at all (NaN: e.g. an unlabelled dataset of a pooled reference) neither vote
    nor take a labelled neighbour's place: the labels are those of a reference of the labelled cells alone."""
    ref, new, model = held_out["ref"], held_out["new"], held_out["model"]
    truth = ref.obs["cell_type"].astype(str).to_numpy().copy()
    draw = np.random.default_rng(0).random(len(truth))
    truth[draw > 0.9] = "unknown"  # ignored labels: neighbours that do not vote, not looked past
    missing = draw < 0.7
    gaps = _reference(ref, model, tmp_path / "gaps", labels=np.where(missing, np.nan, truth).astype(object))
    got = query(_rna_only(new), model, gaps, section={"k": 5}).labels
    only = _reference(ref.subset(np.flatnonzero(~missing)), model, tmp_path / "labelled", labels=truth[~missing])
    want = query(_rna_only(new), model, only, section={"k": 5}).labels
    pd.testing.assert_frame_equal(got, want, rtol=1e-4)


def test_voting_weight_looks_past_cells_without_a_label(held_out, tmp_path):
    """Only one type's cells labelled, fewer than impute_k: a cell of that type has all of them among its nearest,
    so its vote is not searched deeper, and the unlabelled neighbours still count for nothing: the whole weight of
    the neighbours that carry a label voted."""
    ref, new, model = held_out["ref"], held_out["new"], held_out["model"]
    types = ref.obs["cell_type"].astype(str).to_numpy()
    kept = pd.Series(types).value_counts().index[-1]  # the smallest type
    n = int((types == kept).sum())
    index = _reference(ref, model, tmp_path / "one_type", labels=np.where(types == kept, types, np.nan).astype(object))
    got = query(_rna_only(new), model, index, section={"k": 5, "impute_k": 2 * n}).labels
    same = new.obs["cell_type"].astype(str).to_numpy() == kept
    assert same.any()
    np.testing.assert_allclose(got["cell_type_voting_weight"].to_numpy()[same], 1.0, rtol=1e-5)


# ------------------------------------------------------------------------- reference protein with gaps


def test_impute_averages_each_protein_over_the_neighbours_that_have_it():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 4)).astype(np.float32)
    ref[rng.random(ref.shape) < 0.4] = np.nan
    ref[:, 3] = np.nan
    ref[:10, 3] = 1.0
    pos = rng.integers(0, 50, size=(30, 6))
    w = rng.random((30, 6))
    w /= w.sum(axis=1, keepdims=True)
    got = impute(ref, pos, w)
    plain = np.full((30, 4), np.nan)
    for i in range(30):
        for p in range(4):
            v = ref[pos[i], p]
            ok = ~np.isnan(v)
            if ok.any():
                plain[i, p] = (w[i, ok] * v[ok]).sum() / w[i, ok].sum()
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-6)
    assert np.isnan(got[:, 3]).any()
    assert not np.isnan(got[:, 3]).all()
    full = rng.normal(size=(50, 4)).astype(np.float32)  # nothing missing: the plain weighted mean
    np.testing.assert_allclose(impute(full, pos, w), np.einsum("nk,nkp->np", w, full[pos]), rtol=1e-5)


def test_reference_protein_of_a_pooled_store_is_nan_outside_each_panel(tmp_path):
    from omicsclip.io.store import StoreWriter

    data = make_synthetic(n_cells=60, n_genes=30, n_proteins=5, n_types=3, seed=0)
    names = list(data.proteins.index)
    obs = data.obs.copy()
    obs["dataset"] = np.where(np.arange(60) < 40, "a", "b")
    prot = np.asarray(data.prot, np.float32).copy()
    prot[40:, 3:] = 0  # dataset b's panel lacks the last two proteins: stored as 0
    with StoreWriter(tmp_path / "pooled.zarr", genes=data.genes, proteins=data.proteins) as w:
        w.append(data.rna, prot, obs)
        w.close(uns={"panels": {"a": names, "b": names[:3]}})
    ids = pd.Index(data.barcodes)[::-1]  # index order differs from store order
    got, got_names = reference_protein(tmp_path / "pooled.zarr", ids, None)
    assert got_names == names
    rows = np.arange(60)[::-1]
    b = rows >= 40
    assert np.isnan(got[b][:, 3:]).all()
    assert not np.isnan(got[b][:, :3]).any()
    assert not np.isnan(got[~b]).any()
    lp = np.log1p(prot[rows].astype(np.float64))
    np.testing.assert_allclose(got[~b], lp[~b] - lp[~b].mean(axis=1, keepdims=True), rtol=1e-5, atol=1e-5)
    lb = lp[b][:, :3]  # CLR over each cell's measured proteins only
    np.testing.assert_allclose(got[b][:, :3], lb - lb.mean(axis=1, keepdims=True), rtol=1e-5, atol=1e-5)
    # the model's panel picks columns; the index keeps the NaN through save and load, and imputes around it
    sub, sub_names = reference_protein(tmp_path / "pooled.zarr", ids, [names[4], names[0]])
    assert sub_names == [names[4], names[0]]
    assert np.isnan(sub[b][:, 0]).all()
    model = PcaModel(data)
    emb = model.embed(data.rna[rows], prot[rows])
    write_index_dir(tmp_path / "idx", embeddings=emb, cell_ids=list(ids), model_fingerprint=model.fingerprint,
                    section={**default_config()["index"], "use_gpu": False}, protein=got, protein_names=names)
    index = ReferenceIndex.load(tmp_path / "idx", use_gpu=False)
    assert np.isnan(index.protein).sum() == np.isnan(got).sum()
    res = query(_rna_only(data), model, index, section={"k": 5, "impute_k": 30, "temperature": 0})
    x = res.imputed.X
    assert np.isfinite(x).all()  # 30 neighbours: some of dataset a measured every protein
    only_b = query(_rna_only(data), model, index, section={"k": 5, "impute_k": 1, "temperature": 0}).imputed.X
    assert np.isfinite(only_b).all()
    # a dataset-b cell's own nearest neighbour (of dataset b) lacks the last two proteins: they come from the
    # nearest cell that measured them (dataset a), not NaN
    q = model.embed(data.rna)["rna"]
    nearest_a = np.argmax(q[40:] @ emb["rna"][~b].T, axis=1)
    np.testing.assert_allclose(only_b[40:, 3:], got[~b][nearest_a][:, 3:], rtol=1e-5, atol=1e-6)
