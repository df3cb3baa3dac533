"""Calibration metrics with known answers, corruption scenarios, learning curves and quality bars."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omicsclip.errors import InputError
from omicsclip.evaluation.fewlabel import (
    BASELINE,
    corrupt,
    fewlabel_arrays,
    markdown_table,
    quality_bars,
    robustness_table,
    run_fewlabel,
)
from omicsclip.heads.calibration import classification_metrics, expected_calibration_error, reliability_bins
from omicsclip.heads.finetune import HeadParams

# ------------------------------------------------------------------------------- calibration


def _two_class(conf: float, n: int, n_correct: int) -> tuple[np.ndarray, np.ndarray]:
    probs = np.tile([conf, 1 - conf], (n, 1))
    y = np.array([0] * n_correct + [1] * (n - n_correct))
    return probs, y


def test_ece_zero_when_confidence_equals_accuracy():
    probs, y = _two_class(0.8, 10, 8)  # 80% confident, 80% right
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_answers():
    probs, y = _two_class(1.0, 10, 5)  # certain, half right
    assert expected_calibration_error(probs, y) == pytest.approx(0.5)
    # two bins: 4 cells at 0.9 (all right: gap 0.1), 6 cells at 0.6 (3 right: gap 0.1) -> 0.1
    p = np.vstack([np.tile([0.9, 0.1], (4, 1)), np.tile([0.6, 0.4], (6, 1))])
    y = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.1)
    # same data, weights by bin size: 0.4 * |1 - 0.9| + 0.6 * |0.5 - 0.6| = 0.1; change one bin
    y2 = np.array([0, 0, 1, 1, 0, 0, 0, 1, 1, 1])  # first bin 50% right: 0.4 * 0.4 + 0.6 * 0.1 = 0.22
    assert expected_calibration_error(p, y2, n_bins=10) == pytest.approx(0.22)


def test_reliability_bins_edges_and_counts():
    p = np.array([[0.5, 0.5], [0.55, 0.45], [1.0, 0.0]])
    b = reliability_bins(p, np.array([0, 1, 0]), n_bins=10)
    assert b["count"].sum() == 3 and b["count"][4] == 1 and b["count"][5] == 1 and b["count"][9] == 1
    assert np.isnan(b["confidence"][0]) and b["accuracy"][9] == 1.0


def test_classification_metrics_against_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    y = rng.integers(0, 4, 200)
    m = classification_metrics(probs, y)
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m["n"] == 200 and 0 <= m["ece"] <= 1


# ------------------------------------------------------------------------------- corruption


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("scenario", ["noise", "rna_noise", "prot_noise", "rna_swap", "prot_swap"])
def test_corrupt_replaces_one_modality_of_half_the_cells(scenario):
    rng = np.random.default_rng(0)
    zr, zp = _unit(rng.normal(size=(100, 8))), _unit(rng.normal(size=(100, 8)))
    cr, cp, hit = corrupt(zr, zp, scenario, np.random.default_rng(1))
    assert hit.any(1).sum() == 50 and not hit.all(1).any()  # half the cells, one modality each
    changed = np.stack([(cr != zr).any(1), (cp != zp).any(1)], 1)
    assert np.array_equal(changed, hit)
    assert np.allclose(np.linalg.norm(cr, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(cp, axis=1), 1,
                                                                                   atol=1e-5)
    if scenario != "noise":
        assert hit[:, 0 if scenario.startswith("rna") else 1].sum() == 50
    if scenario.endswith("swap"):  # another cell's real embedding
        j = 0 if scenario.startswith("rna") else 1
        src, out = (zr, zp)[j], (cr, cp)[j]
        for i in np.flatnonzero(hit[:, j])[:5]:
            match = np.flatnonzero((src == out[i]).all(1))
            assert len(match) == 1 and match[0] != i


# ------------------------------------------------------------------------------- learning curves


def _embedding(n=400, seed=0):
    rng = np.random.default_rng(seed)
    cent_r, cent_p = _unit(rng.normal(size=(3, 12)) + 2.0), _unit(rng.normal(size=(3, 12)) - 2.0)
    t = rng.integers(0, 3, n)
    zr = _unit(cent_r[t] + 0.2 * rng.normal(size=(n, 12)))
    zp = _unit(cent_p[t] + 0.2 * rng.normal(size=(n, 12)))
    labels = np.array(["a", "b", "c"], dtype=object)[t]
    labels[:20] = "unknown"
    labels[20:30] = None
    split = rng.choice(["train", "val", "test"], size=n, p=[0.6, 0.1, 0.3])
    pcs = np.hstack([t[:, None] + 0.5 * rng.normal(size=(n, 1)), rng.normal(size=(n, 4))]).astype(np.float32)
    return zr, zp, labels, split, pcs


def test_fewlabel_arrays_structure_and_protocol():
    zr, zp, labels, split, pcs = _embedding()
    labels[labels == "unknown"] = None  # what label_array does with --ignore-label unknown
    res = fewlabel_arrays(zr, zp, labels, split, params=HeadParams(epochs=30, ensemble=2, mc_samples=3),
                          labels_per_class=(2, 10), n_draws=2, methods=("late", "gated", "rna"), pcs=pcs,
                          scenarios=("noise", "rna_swap"))
    assert res["classes"] == ["a", "b", "c"]
    assert res["n_eval_cells"] == int(((split == "test") & np.array([lab is not None for lab in labels])).sum())
    assert res["n_labelled"] == {"2": [6, 6], "10": [30, 30]}
    assert res["methods"] == ["late", "gated", "rna", BASELINE]
    for m in res["methods"]:
        for n in ("2", "10"):
            acc = res["curves"][m][n]["accuracy"]
            assert len(acc["values"]) == 2 and 0 <= acc["mean"] <= 1 and acc["sd"] >= 0
            assert set(res["curves"][m][n]) == {"accuracy", "macro_f1", "ece"}
    assert res["curves"]["late"]["10"]["accuracy"]["mean"] > 0.9  # easy synthetic data
    rob = res["robustness"]["gated"]["10"]
    assert set(rob) == {"noise", "rna_swap"} and "accuracy_drop" in rob["noise"]
    assert BASELINE not in res["robustness"]
    assert res["bars"]["labels_per_class"] == 10 and "fusion_vs_logreg" in res["bars"]
    table = markdown_table(res)
    assert table.count("\n") == 1 + len(res["methods"]) and "10/class" in table
    assert "noise" in robustness_table(res)


def test_fewlabel_needs_labelled_training_and_test_cells():
    zr, zp, labels, split, _ = _embedding(60)
    with pytest.raises(InputError, match="at least 2 classes"):
        fewlabel_arrays(zr, zp, np.array([None] * 60, dtype=object), split, params=HeadParams(epochs=2))
    with pytest.raises(InputError, match="no labelled 'holdout' cells"):
        fewlabel_arrays(zr, zp, labels, split, params=HeadParams(epochs=2), eval_split="holdout")


def _result(acc: dict[str, float], drops: dict[str, float]) -> dict:
    curves = {m: {"10": {"accuracy": {"mean": a}}} for m, a in acc.items()}
    rob = {m: {"10": {"noise": {"accuracy_drop": {"mean": d}}}} for m, d in drops.items()}
    return {"curves": curves, "robustness": rob}


def test_quality_bars():
    acc = {"early": 0.90, "late": 0.93, "gated": 0.95, "uncertainty": 0.94, "tensor": 0.92, "rna": 0.91,
           "prot": 0.85, BASELINE: 0.86}
    bars = quality_bars(_result(acc, {"gated": 0.01, "uncertainty": 0.02, "early": 0.08}))
    assert bars["fusion_vs_logreg"]["best_fusion"] == "gated" and bars["fusion_vs_logreg"]["pass"]
    assert bars["no_negative_transfer"]["worst_fusion"] == "early" and bars["no_negative_transfer"]["pass"]
    assert bars["robustness"]["pass"] and bars["all_pass"]
    acc.update({"tensor": 0.89, BASELINE: 0.88})  # tensor 2 points below RNA; margin over logreg 7 points
    bars = quality_bars(_result(acc, {"gated": 0.01, "uncertainty": 0.05, "early": 0.08}))
    assert not bars["no_negative_transfer"]["pass"] and not bars["fusion_vs_logreg"]["pass"]
    assert not bars["robustness"]["pass"] and not bars["all_pass"]


def test_run_fewlabel_writes_json(tmp_path):
    import anndata as ad
    import pandas as pd

    zr, zp, labels, split, pcs = _embedding(300, seed=1)
    a = ad.AnnData(obs=pd.DataFrame({"ct": labels, "split": split}, index=[f"c{i}" for i in range(300)]))
    a.obsm["X_omicsclip_rna"], a.obsm["X_omicsclip_prot"], a.obsm["X_pca_rna"] = zr, zp, pcs
    a.uns["omicsclip"] = {"model_fingerprint": "fp"}
    with ad.settings.override(zarr_write_format=2):
        a.write_zarr(tmp_path / "emb.zarr")
    doc = run_fewlabel(tmp_path / "emb.zarr", tmp_path / "f.json", label_key="ct", labels_per_class=(3,),
                       n_draws=1, section={"epochs": 20, "ensemble": 2, "mc_samples": 2})
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["classes"] == ["a", "b", "c"] == doc["classes"]  # "unknown" ignored by default
    assert saved["baseline_pcs"].startswith("obsm['X_pca_rna']") and BASELINE in saved["methods"]
    assert saved["model_fingerprint"] == "fp"
    with pytest.raises(InputError, match="already exists"):
        run_fewlabel(tmp_path / "emb.zarr", tmp_path / "f.json", label_key="ct")
    with pytest.raises(InputError, match="both --store and --model"):
        run_fewlabel(tmp_path / "emb.zarr", tmp_path / "g.json", label_key="ct", store=tmp_path)
