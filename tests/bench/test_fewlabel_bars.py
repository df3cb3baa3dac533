"""bench/fewlabel.py's quality bars (benchmark code, not the library's): known answers, and on a real result."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_bench

from omicsclip.config import load_config
from omicsclip.evaluation.fewlabel import BASELINE, fewlabel_arrays
from omicsclip.heads import HeadParams


@pytest.fixture(scope="module")
def fewlabel_bench():
    return load_bench("fewlabel")


def _result(acc: dict[str, float], drops: dict[str, float]) -> dict:
    curves = {m: {"10": {"accuracy": {"mean": a}}} for m, a in acc.items()}
    rob = {m: {"10": {"noise": {"accuracy_drop": {"mean": d}}}} for m, d in drops.items()}
    return {"curves": curves, "robustness": rob}


def test_quality_bars(fewlabel_bench):
    acc = {"early": 0.90, "late": 0.93, "gated": 0.95, "uncertainty": 0.94, "tensor": 0.92, "rna": 0.91,
           "prot": 0.85, BASELINE: 0.86}
    bars = fewlabel_bench.quality_bars(_result(acc, {"gated": 0.01, "uncertainty": 0.02, "early": 0.08}))
    assert bars["fusion_vs_logreg"]["best_fusion"] == "gated"
    assert bars["fusion_vs_logreg"]["pass"]
    assert bars["no_negative_transfer"]["worst_fusion"] == "early"
    assert bars["no_negative_transfer"]["pass"]
    assert bars["robustness"]["pass"]
    assert bars["all_pass"]
    acc.update({"tensor": 0.89, BASELINE: 0.88})  # tensor 2 points below RNA; margin over logreg 7 points
    bars = fewlabel_bench.quality_bars(_result(acc, {"gated": 0.01, "uncertainty": 0.05, "early": 0.08}))
    assert not bars["no_negative_transfer"]["pass"]
    assert not bars["fusion_vs_logreg"]["pass"]
    assert not bars["robustness"]["pass"]
    assert not bars["all_pass"]


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_quality_bars_of_a_fewlabel_result(fewlabel_bench):
    rng = np.random.default_rng(0)
    n = 240
    t = rng.integers(0, 3, n)
    cent_r, cent_p = _unit(rng.normal(size=(3, 12)) + 2.0), _unit(rng.normal(size=(3, 12)) - 2.0)
    zr, zp = _unit(cent_r[t] + 0.2 * rng.normal(size=(n, 12))), _unit(cent_p[t] + 0.2 * rng.normal(size=(n, 12)))
    labels = np.array(["a", "b", "c"], dtype=object)[t]
    split = rng.choice(["train", "test"], size=n, p=[0.7, 0.3])
    pcs = (t[:, None] + 0.5 * rng.normal(size=(n, 2))).astype(np.float32)
    hp = HeadParams.from_section({**load_config(None)["finetune"], "epochs": 10, "ensemble": 2, "mc_samples": 2})
    res = fewlabel_arrays(zr, zp, labels, split, params=hp, labels_per_class=(fewlabel_bench.BAR_LEVEL,), n_draws=1,
                          methods=("late", "gated", "rna"), pcs=pcs, scenarios=("noise",))
    bars = fewlabel_bench.quality_bars(res)
    assert bars["labels_per_class"] == 10
    assert "fusion_vs_logreg" in bars
    assert "no_negative_transfer" in bars
    assert set(bars["robustness"]["accuracy_drop"]) == {"gated"}
    assert isinstance(bars["all_pass"], bool)
    table = fewlabel_bench.markdown({"demo": {**res, "bars": bars, "epochs_trained": 1}}, seed=0)
    assert "| accuracy" in table
    assert "best fusion" in table
    assert "Robustness at 10 labels/class" in table
