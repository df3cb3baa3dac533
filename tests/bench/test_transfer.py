"""bench/transfer.py (issue #15): metrics on known inputs, pair preparation, baselines on tiny synthetic data."""

from __future__ import annotations

import importlib
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import REPO, shared_h5ad


@pytest.fixture(scope="module")
def tm():
    sys.path.insert(0, str(REPO / "bench"))  # the bench helpers import each other by module name
    return importlib.import_module("transfer_metrics")


@pytest.fixture(scope="module")
def tp(tm):
    return importlib.import_module("transfer_peers")


def test_clr_and_recentre(tm):
    counts = np.array([[0.0, 1.0, 3.0], [10.0, 10.0, 10.0]])
    clr = tm.clr_counts(counts)
    np.testing.assert_allclose(clr.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(clr[0], np.log1p(counts[0]) - np.log1p(counts[0]).mean())
    np.testing.assert_allclose(clr[1], 0.0, atol=1e-12)
    # CLR over a whole panel, restricted to a sub-panel and re-centred == CLR over the sub-panel
    rng = np.random.default_rng(0)
    full = rng.poisson(50, (20, 7)).astype(float)
    sub = [1, 4, 5]
    np.testing.assert_allclose(tm.recentre(tm.clr_counts(full)[:, sub]), tm.clr_counts(full[:, sub]), atol=1e-12)


def test_pearson_columns_known_inputs(tm):
    a = np.array([[1.0, 1.0, 2.0], [2.0, 2.0, 2.0], [3.0, 3.0, 2.0], [4.0, 4.5, 2.0]])
    b = np.array([[2.0, -1.0, 1.0], [4.0, -2.0, 2.0], [6.0, -3.0, 3.0], [8.0, -4.0, 4.0]])
    r = tm.pearson_columns(a, b)
    assert r[0] == pytest.approx(1.0)
    assert r[1] == pytest.approx(np.corrcoef(a[:, 1], b[:, 1])[0, 1])
    assert r[1] < -0.99
    assert np.isnan(r[2])  # constant column
    with pytest.raises(ValueError, match="shapes differ"):
        tm.pearson_columns(a, b[:, :2])


def test_protein_pearson_is_blind_to_per_cell_offsets(tm):
    rng = np.random.default_rng(1)
    truth = rng.poisson(rng.uniform(5, 500, (200, 4))).astype(float)
    proteins = ["CD3", "CD4", "CD8a", "CD19"]
    pred = tm.clr_counts(truth) + rng.normal(0, 3, (200, 1))  # a different per-cell level, as a bigger panel gives
    res = tm.protein_pearson(pred, truth, proteins)
    assert list(res["per_protein"]) == proteins
    assert res["mean_pearson"] == pytest.approx(1.0)
    noisy = tm.protein_pearson(pred + rng.normal(0, 1, pred.shape), truth, proteins)
    assert 0 < noisy["mean_pearson"] < 1
    with pytest.raises(ValueError, match="one column per shared protein"):
        tm.protein_pearson(pred[:, :3], truth, proteins)


def test_paired_bootstrap_separates_a_real_gap_from_a_tie(tm):
    rng = np.random.default_rng(2)
    truth = rng.poisson(rng.uniform(5, 300, (400, 5))).astype(float)
    clr = tm.clr_counts(truth)
    good = clr + rng.normal(0, 0.3, clr.shape)
    preds = {"good": good, "worse": clr + rng.normal(0, 1.0, clr.shape), "same": good.copy()}
    preds["same"][0, 0] = np.nan  # a cell one method did not predict is left out for all
    res = tm.paired_bootstrap(preds, truth, "good", n_boot=300, seed=0)
    assert set(res) == {"worse", "same"}
    w, t = res["worse"], res["same"]
    full = {m: tm.protein_pearson(p[1:], truth[1:], list("abcde"))["mean_pearson"] for m, p in preds.items()}
    assert w["delta"] == pytest.approx(full["good"] - full["worse"])
    assert 0 < w["ci95"][0] < w["delta"] < w["ci95"][1]
    assert w["p_lead_above"] == 1.0
    assert t["delta"] == pytest.approx(0.0)
    assert t["ci95"] == pytest.approx([0.0, 0.0])
    assert t["p_lead_above"] == 0.0  # never strictly above a tie
    assert w["n_cells"] == 399
    assert w["n_boot"] == 300
    with pytest.raises(ValueError, match="0 query cell"):
        tm.paired_bootstrap({"a": good[:2], "b": np.full((2, 5), np.nan)}, truth[:2], "a")
    with pytest.raises(ValueError, match=r"3 query cell\(s\) .*at least 10"):
        tm.paired_bootstrap({"a": good[:3], "b": good[:3]}, truth[:3], "a")


def test_compare_imputation_pairs_the_pooled_model_with_the_single_one(tp):
    from conftest import load_bench

    transfer = load_bench("transfer")
    rng = np.random.default_rng(3)
    counts = rng.poisson(rng.uniform(5, 300, (200, 4))).astype(float)
    proteins = ["CD3", "CD4", "CD8a", "CD19"]
    pair = tp.Pair(**{**{f: None for f in tp.Pair.__dataclass_fields__},
                      "query_protein": pd.DataFrame(counts, columns=proteins), "proteins": proteins})
    clr = importlib.import_module("transfer_metrics").clr_counts(counts)
    preds = {m: clr + rng.normal(0, s, clr.shape) for m, s in (("ridge", 1.0), ("knn", 0.8), ("omicsclip", 0.4))}
    preds["omicsclip_pooled"] = clr + rng.normal(0, 0.3, clr.shape)
    preds["omicsclip_pooled"][:20] = np.nan  # cells no pooled neighbour measured
    res = transfer.compare_imputation(pair, preds, seed=0)
    assert set(res["omicsclip"]) == {"ridge", "knn"}
    assert res["omicsclip"]["knn"]["n_cells"] == 200  # not cut by the pooled model's unpredicted cells
    assert set(res["omicsclip_pooled"]) == {"ridge", "knn", "omicsclip"}
    assert res["omicsclip_pooled"]["omicsclip"]["n_cells"] == 180
    assert res["omicsclip"]["knn"]["ci95"][0] > 0
    with pytest.raises(ValueError, match="predictions and name go together"):
        transfer.score_output(pair, {}, predictions={})


def test_label_accuracy_scores_shared_labels_only(tm):
    truth = ["T", "T", "B", "unknown", "DC", "B"]
    pred = ["T", "B", "B", "T", "DC", "NK"]
    res = tm.label_accuracy(pred, truth, ["B", "T", "unknown"])  # DC is not shared; unknown never counts
    assert res["n_scored"] == 4
    assert res["accuracy"] == pytest.approx(2 / 4)
    assert tm.label_accuracy(pred, truth, [])["accuracy"] is None


def test_ood_auroc(tm):
    score = np.array([0.9, 0.8, 0.7, 0.2, 0.1])  # high = in-reference
    removed = np.array([False, False, False, True, True])
    assert tm.ood_auroc(score, removed) == pytest.approx(1.0)
    assert tm.ood_auroc(-score, removed) == pytest.approx(0.0)
    assert tm.ood_auroc(np.r_[0.1, score[1:]], removed) == pytest.approx(4.5 / 6)  # one pair wrong, one tied
    assert tm.ood_auroc(score, np.zeros(5, bool)) is None
    res = tm.ood_eval(np.r_[score, -5.0], ["T", "T", "NK", "B", "B", "unknown"], "B")
    assert res["n_scored"] == 5  # the unknown cell (lowest score) is left out
    assert res["auroc"] == pytest.approx(1.0)


def test_shared_genes_and_proteins(tp):
    assert tp.shared_genes(["A", "B", "C", "D", "D", "E"], ["E", "C", "A", "D", "X"]) == ["A", "C", "E"]
    assert tp.shared_genes(["A", "B"], ["B", "B", "A"]) == ["A"]  # duplicated in the query: dropped from both
    assert tp.shared_proteins(["CD4", "CD8a", "CD3", "CD19"], ["CD3", "CD4", "CD8"]) == ["CD4", "CD3"]
    assert tp.shared_labels(np.array(["T", "B", "unknown", "DC"]), np.array(["B", "T", "unknown", "NK"])) == [
        "B", "T"]
    assert tp.shared_labels(np.array(["T"]), None) == []


def _lab(n, genes, proteins, labels, seed):
    rng = np.random.default_rng(seed)
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(2.0, (n, len(genes))).astype(np.float32)),
                   obs=pd.DataFrame({"cell_type": rng.choice(labels, n)}, index=[f"c{seed}_{i}" for i in range(n)]),
                   var=pd.DataFrame(index=genes))
    a.obsm["protein"] = pd.DataFrame(rng.poisson(30.0, (n, len(proteins))).astype(np.float32), index=a.obs_names,
                                     columns=proteins)
    return a


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_prepare_pair(tp):
    ref = _lab(40, ["G1", "G2", "G3", "G4", "G4"], ["CD3", "CD4", "CD19"], ["T", "B", "unknown", "DC"], 0)
    qry = _lab(30, ["G3", "G1", "G4", "G9"], ["CD19", "CD3", "CD56"], ["T", "B", "unknown", "NK"], 1)
    pair = tp.prepare_pair(ref, qry, "ref", "qry")
    assert pair.name == "ref->qry"
    assert pair.genes == ["G1", "G3"]  # G4 is duplicated in the reference
    assert pair.proteins == ["CD3", "CD19"]
    assert pair.labels == ["B", "T"]
    np.testing.assert_array_equal(pair.query_rna.toarray(), qry.X.toarray()[:, [1, 0]])
    np.testing.assert_array_equal(pair.ref_rna.toarray(), ref.X.toarray()[:, [0, 2]])
    assert list(pair.ref_protein.columns) == ["CD3", "CD4", "CD19"]  # the reference's whole panel
    np.testing.assert_array_equal(pair.query_protein.to_numpy(), qry.obsm["protein"][["CD3", "CD19"]].to_numpy())
    removed = tp.prepare_pair(ref, qry, "ref", "qry", remove_type="B")
    assert "B" not in set(removed.ref_labels)
    kept = ~ref.obs["cell_type"].isin(["B", "unknown"])  # the unlabelled cells go too (they may be B cells)
    assert removed.ref_rna.shape[0] == removed.ref_protein.shape[0] == kept.sum()
    assert removed.labels == ["T"]
    with pytest.raises(ValueError, match="share no proteins"):
        tp.prepare_pair(ref, _lab(5, ["G1"], ["CD56"], ["T"], 2))


def test_baselines_on_two_synthetic_labs(tp):
    from omicsclip.io.synthetic import make_synthetic

    data = make_synthetic(n_cells=400, n_genes=120, n_proteins=6, n_types=3, n_batches=2, seed=0)
    labs = [data.subset(np.flatnonzero(data.obs["batch"].astype(str).to_numpy() == f"batch{i}")).to_anndata()
            for i in (1, 2)]
    for a in labs:
        a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    labs[1].obsm["protein"] = labs[1].obsm["protein"].iloc[:, :4]
    pair = tp.prepare_pair(labs[0], labs[1], "labA", "labB")
    res = tp.run_baselines(pair, seed=0)
    assert set(res) == {"ridge", "knn", "logreg"}
    for m in ("ridge", "knn"):
        assert set(res[m]["protein"]["per_protein"]) == set(pair.proteins)
        assert res[m]["protein"]["mean_pearson"] > 0.3
    for m in ("logreg", "knn"):
        assert res[m]["labels"]["accuracy"] > 0.7
    removed = tp.prepare_pair(labs[0], labs[1], "labA", "labB", remove_type=pair.labels[0])
    ood = tp.run_ood_baseline(removed, pair.labels[0])
    assert 0.0 <= ood["auroc"] <= 1.0


def test_markdown_report(tm):
    from conftest import load_bench

    transfer = load_bench("transfer")
    result = {"pairs": {"a:b": {"methods": {
        "ridge": {"protein": {"mean_pearson": 0.81234}, "seconds": 1.0},
        "knn": {"protein": {"mean_pearson": 0.8}, "labels": {"accuracy": 0.9}, "ood": {"auroc": 0.95},
                "seconds": 2.0, "label_seconds": 1.0},
        "omicsclip": {"error": "failed: something"}},
        "imputation_bootstrap": {"omicsclip": {"knn": {"delta": 0.01, "ci95": [0.001, 0.02], "p_lead_above": 0.975,
                                                       "n_boot": 2000, "n_cells": 500}}}}}}
    md = transfer.markdown(result)
    assert "| a:b | omicsclip | knn | 500 | +0.0100 | [+0.0010, +0.0200] | 97.5% of 2000 |" in md
    assert "| a:b | ridge | 0.812 | — | — | 1.0 |" in md
    assert "| a:b | knn | 0.800 | 0.900 | 0.950 | 3.0 |" in md
    assert "failed: something" in md
    result["pairs"]["c:d"] = {"methods": {}, "imputation_bootstrap": {"error": "paired bootstrap: 3 query cell(s)"}}
    assert "Imputation bootstrap not run: c:d: paired bootstrap: 3 query cell(s)" in transfer.markdown(result)
    assert transfer.totalvi_epochs(8227) == 52
    assert transfer.totalvi_epochs(100) == 400


def test_omicsclip_path_end_to_end_on_two_synthetic_labs(tmp_path):
    """bench/transfer.py --small with omicsclip (tiny training): the CLI path runs and every output is scored."""
    from conftest import load_bench

    transfer = load_bench("transfer")
    res = transfer.main(["--small", "--skip-totalvi", "--workdir", str(tmp_path / "w"), "--out",
                         str(tmp_path / "t.json"), "--pairs", "labA:labB", "--set", "train.epochs=3", "--set",
                         "model.members=1", "--set", "train.batch_size=64", "--set", "preprocess.n_hvg=100"])
    om = res["pairs"]["labA:labB"]["methods"]["omicsclip"]
    assert -1.0 <= om["protein"]["mean_pearson"] <= 1.0
    assert 0.0 <= om["labels"]["accuracy"] <= 1.0
    assert 0.0 <= om["ood"]["auroc"] <= 1.0
    assert (tmp_path / "t.md").read_text().count("labA:labB") >= 6  # the methods' rows and the bootstrap's
    boot = res["pairs"]["labA:labB"]["imputation_bootstrap"]["omicsclip"]
    assert set(boot) == {"ridge", "knn"}
    assert boot["knn"]["delta"] == pytest.approx(
        om["protein"]["mean_pearson"] - res["pairs"]["labA:labB"]["methods"]["knn"]["protein"]["mean_pearson"])
    assert boot["knn"]["ci95"][0] <= boot["knn"]["ci95"][1]
    # bench/transfer_query_sweep.py re-queries that run's model and index: its default setting (impute_k 20)
    # reproduces the number above, another is scored too
    sweep = load_bench("transfer_query_sweep").main([
        str(tmp_path / "w"), "--small", "--pairs", "labA:labB", "--grid", "impute_k=20,3",
        "--out", str(tmp_path / "s.json")])
    by_k = {r["impute_k"]: r["mean_pearson"] for r in sweep["rows"]}
    assert by_k["20"] == pytest.approx(om["protein"]["mean_pearson"], abs=1e-9)
    assert -1.0 <= by_k["3"] <= 1.0
    assert by_k["3"] != by_k["20"]
    assert [r["n_pairs"] for r in sweep["mean_over_pairs"]] == [1, 1]
    with pytest.raises(SystemExit, match=r"labA:labB with query\.nonsense=1: .*'nonsense' was unexpected"):
        load_bench("transfer_query_sweep").main([str(tmp_path / "w"), "--small", "--pairs", "labA:labB", "--grid",
                                                 "nonsense=1", "--out", str(tmp_path / "s3.json")])
    # a pair the workdir holds no run of is named before any pair is swept
    with pytest.raises(SystemExit, match=r"no omicsclip run .*\(labB:labA\)"):
        load_bench("transfer_query_sweep").main([str(tmp_path / "w"), "--small", "--pairs", "labA:labB", "labB:labA",
                                                 "--grid", "impute_k=20", "--out", str(tmp_path / "s4.json")])
    with pytest.raises(SystemExit, match="pair 'labA': expected REF:QUERY"):
        load_bench("transfer_query_sweep").main([str(tmp_path / "w"), "--small", "--pairs", "labA", "--grid",
                                                 "impute_k=20", "--out", str(tmp_path / "s2.json")])
    # bench/transfer_compare.py reads both runs' imputed protein and scores them as bench/transfer.py does: a run
    # against itself differs by exactly 0, every resample
    cmp = load_bench("transfer_compare")
    same = cmp.main([str(tmp_path / "w"), str(tmp_path / "w"), "--small", "--pairs", "labA:labB", "--names", "x,y",
                     "--out", str(tmp_path / "c.json")])
    row = same["rows"][0]
    assert row["x"] == pytest.approx(om["protein"]["mean_pearson"], abs=1e-9)
    assert row["y"] == row["x"]
    assert row["delta"] == 0.0
    assert row["ci95"] == [0.0, 0.0]
    assert row["p_lead_above"] == 0.0
    with pytest.raises(SystemExit, match=r"no omicsclip query output .*nowhere"):
        cmp.main([str(tmp_path / "w"), str(tmp_path / "nowhere"), "--small", "--pairs", "labA:labB",
                  "--out", str(tmp_path / "c2.json")])
    with pytest.raises(SystemExit):  # argparse: two different names
        cmp.main([str(tmp_path / "w"), str(tmp_path / "w"), "--small", "--pairs", "labA:labB", "--names", "x,x",
                  "--out", str(tmp_path / "c3.json")])
    # a run of another query (here: the synthetic labs of another seed) is named, not an index error
    with pytest.raises(SystemExit, match=r"labA:labB: .* of the \d+ query cells are not in its imputed protein"):
        cmp.main([str(tmp_path / "w"), str(tmp_path / "w"), "--small", "--seed", "1", "--pairs", "labA:labB",
                  "--out", str(tmp_path / "c4.json")])


def test_real_pair_preparation(tp):
    ref = tp.load_dataset(shared_h5ad("bremsc_inhouse_pbmc"))
    qry = tp.load_dataset(shared_h5ad("pbmc10k_protein_v3"))
    pair = tp.prepare_pair(ref, qry, "bremsc", "pbmc10k")
    assert len(pair.genes) == len(set(pair.genes)) > 3000
    assert set(pair.proteins) == {"CD4", "CD56", "CD3", "CD19", "CD14", "CD8a", "CD16", "CD127"}
    assert "unknown" not in pair.labels
    assert "B cells" in pair.labels


def test_pool_members_never_pool_the_query(tm):
    tr = importlib.import_module("transfer")
    assert tr.pool_members("pbmc5p", "bremsc", "pbmc10k") == ["pbmc5p"]
    assert tr.pool_members("pbmc10k,bremsc,pbmc5p", "pbmc10k", "eccite") == ["bremsc", "pbmc5p"]
    assert tr.pool_members("pbmc5p", "bremsc", "pbmc5p") == []  # the query would be in the pool
    assert tr.pool_members("pbmc10k,pbmc5p", "bremsc", "pbmc10k") == []
    assert tr.pool_members(None, "bremsc", "pbmc10k") == []


def test_pair_paths_names_a_missing_dataset_file_before_any_work(tm, tmp_path, monkeypatch):
    tr = importlib.import_module("transfer")
    monkeypatch.setattr(tr, "SHARED", tmp_path / "nodata")
    with pytest.raises(SystemExit, match=r"^bench/transfer.py: no such file: .*bremsc_inhouse_pbmc.h5ad"):
        tr.main(["--pairs", "bremsc:pbmc10k", "--skip-totalvi", "--out", str(tmp_path / "t.json")])
    with pytest.raises(SystemExit, match=r"^prog: no such file: .*nodata/bremsc_inhouse_pbmc/bremsc_inhouse_pbmc.h5ad"):
        tr.pair_paths(["bremsc:pbmc10k"], tmp_path, False, 0, "prog")
    with pytest.raises(SystemExit, match=r"^prog: pair 'bremsc': expected REF:QUERY"):
        tr.pair_paths(["bremsc"], tmp_path, False, 0, "prog")


def test_shared_data_gene_names_lose_a_genome_prefix(tp):
    a = tp.load_dataset(shared_h5ad("eccite_pbmc_citefuse"))
    assert not any(str(g).startswith("hg19_") for g in a.var_names)


def test_pooled_diagnose_helpers(tm):
    pdg = importlib.import_module("pooled_diagnose")
    ref = np.eye(4, dtype=np.float32)
    values = np.array([[1.0, np.nan], [2.0, 5.0], [3.0, 6.0], [4.0, 7.0]], np.float32)
    query = np.array([[1.0, 0.1, 0.0, 0.0]], np.float32)
    query /= np.linalg.norm(query)
    # two neighbours (cells 0 and 1), the nearer weighted almost fully (e^-18 for the other); the second
    # protein only from the cell that measured it (weights renormalised over the cells that have it)
    got = pdg.knn_impute(query, ref, values, k=2, temperature=0.05)
    np.testing.assert_allclose(got, [[1.0, 5.0]], atol=1e-3)
    # at a temperature where the far neighbour's weight underflows to 0, nothing is left for that protein
    assert np.isnan(pdg.knn_impute(query, ref, values, k=2, temperature=1e-3)[0, 1])
    # per protein: the k nearest among cells that measured it
    np.testing.assert_allclose(pdg.per_protein(query, ref, values, k=1, temperature=1e-3), [[1.0, 5.0]], atol=1e-3)
    z = pdg.zscored(values, np.array(["a", "a", "b", "b"]))
    np.testing.assert_allclose(z[:, 0], [-1, 1, -1, 1])
    assert np.isnan(z[0, 1])
    np.testing.assert_allclose(z[2:, 1], [-1, 1])


def test_bad_pair_keys_are_one_line_errors(tm):
    tr = importlib.import_module("transfer")
    known = ["bremsc", "pbmc10k", "pbmc5p"]
    assert tr.pair_errors(["bremsc:pbmc10k", "pbmc10k:pbmc5p"], known, "pbmc5p") is None
    for key in ("pbmc10k", "pbmc10k:nope", "a:b:c", "bremsc:bremsc"):
        msg = tr.pair_errors([key], known)
        assert msg.startswith(f"pair {key!r}: expected REF:QUERY")
        assert "\n" not in msg
    assert tr.pair_errors(["bremsc:pbmc10k"], known, "pbmc5p,nope") == \
        "--pooled-with nope: not one of bremsc, pbmc10k, pbmc5p"


def test_totalvi_rows_are_copied_only_for_pairs_prepared_alike(tm):
    tr = importlib.import_module("transfer")
    pair = {"reference": "a", "query": "b", "n_ref": 10, "shared_proteins": ["CD3"]}
    earlier = {"pairs": {"a:b": {"pair": pair, "methods": {"totalvi": {"protein": {"mean_pearson": 0.5}}}}}}
    result = {"pairs": {"a:b": {"pair": dict(pair), "methods": {"omicsclip": {}}}, "b:a": {"pair": {}, "methods": {}}}}
    assert tr.merge_totalvi(result, earlier, "old.json") == ["a:b"]
    assert result["pairs"]["a:b"]["methods"]["totalvi"] == {"protein": {"mean_pearson": 0.5}, "from": "old.json"}
    assert "totalvi" not in result["pairs"]["b:a"]["methods"]
    other = {"pairs": {"a:b": {"pair": {**pair, "n_ref": 11}, "methods": {}}}}
    with pytest.raises(SystemExit, match="prepared differently"):
        tr.merge_totalvi(other, earlier, "old.json")


def test_unreadable_totalvi_from_is_one_line(tm, tmp_path):
    tr = importlib.import_module("transfer")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(SystemExit, match="--totalvi-from .*unreadable"):
            tr.main(["--small", "--skip-totalvi", "--totalvi-from", str(path), "--out", str(tmp_path / "o.json")])
