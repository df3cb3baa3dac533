"""Corruption scenarios, learning curves, their markdown tables and the fewlabel.json file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omicsclip.config import load_config
from omicsclip.errors import InputError
from omicsclip.evaluation.fewlabel import (
    BASELINE,
    corrupt,
    fewlabel_arrays,
    markdown_table,
    robustness_table,
    run_fewlabel,
)
from omicsclip.heads import HeadParams

FINETUNE = load_config(None)["finetune"]
EVALUATE = load_config(None)["evaluate"]


def params(**overrides) -> HeadParams:
    return HeadParams.from_section({**FINETUNE, **overrides})

# ------------------------------------------------------------------------------- corruption


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("scenario", ["noise", "rna_noise", "prot_noise", "rna_swap", "prot_swap"])
def test_corrupt_replaces_one_modality_of_half_the_cells(scenario):
    rng = np.random.default_rng(0)
    zr, zp = _unit(rng.normal(size=(100, 8))), _unit(rng.normal(size=(100, 8)))
    cr, cp, hit = corrupt(zr, zp, scenario, np.random.default_rng(1))
    assert hit.any(1).sum() == 50
    assert not hit.all(1).any()
    changed = np.stack([(cr != zr).any(1), (cp != zp).any(1)], 1)
    assert np.array_equal(changed, hit)
    assert np.allclose(np.linalg.norm(cr, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(cp, axis=1), 1,
                                                                                   atol=1e-5)
    if scenario != "noise":
        assert hit[:, 0 if scenario.startswith("rna") else 1].sum() == 50
    if scenario.endswith("swap"):  # another cell's real embedding
        j = 0 if scenario.startswith("rna") else 1
        src, out = (zr, zp)[j], (cr, cp)[j]
        for i in np.flatnonzero(hit[:, j])[:5]:
            match = np.flatnonzero((src == out[i]).all(1))
            assert len(match) == 1
            assert match[0] != i


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
    res = fewlabel_arrays(zr, zp, labels, split, params=params(epochs=30, ensemble=2, mc_samples=3),
                          labels_per_class=(2, 10), n_draws=2, methods=("late", "gated", "rna"), pcs=pcs,
                          scenarios=("noise", "rna_swap"))
    assert res["classes"] == ["a", "b", "c"]
    assert res["n_eval_cells"] == int(((split == "test") & np.array([lab is not None for lab in labels])).sum())
    assert res["n_labelled"] == {"2": [6, 6], "10": [30, 30]}
    assert res["methods"] == ["late", "gated", "rna", BASELINE]
    for m in res["methods"]:
        for n in ("2", "10"):
            acc = res["curves"][m][n]["accuracy"]
            assert len(acc["values"]) == 2
            assert 0 <= acc["mean"] <= 1
            assert acc["sd"] >= 0
            assert set(res["curves"][m][n]) == {"accuracy", "macro_f1", "ece"}
    assert res["curves"]["late"]["10"]["accuracy"]["mean"] > 0.9  # easy synthetic data
    rob = res["robustness"]["gated"]["10"]
    assert set(rob) == {"noise", "rna_swap"}
    assert "accuracy_drop" in rob["noise"]
    assert BASELINE not in res["robustness"]
    assert "bars" not in res  # the quality bars are the benchmark's (bench/fewlabel.py), not the library's
    table = markdown_table(res)
    assert table.count("\n") == 1 + len(res["methods"])
    assert "10/class" in table
    assert "noise" in robustness_table(res, 10)


def _cells(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]


def test_markdown_tables_content():
    """pandas' to_markdown tables hold what the hand-written tables held: same header, rows and cell text."""
    stat = {"mean": 0.9, "sd": 0.0123}
    res = {"labels_per_class": [1, 10], "methods": ["late", "rna"], "scenarios": ["noise", "rna_swap"],
           "curves": {"late": {"1": {"accuracy": stat}, "10": {"accuracy": {"mean": 0.95, "sd": 0.01}}},
                      "rna": {"10": {"accuracy": {"mean": 0.5, "sd": 0.0}}}},
           "robustness": {"late": {"10": {"noise": {"accuracy": {"mean": 0.93}, "accuracy_drop": {"mean": 0.02}},
                                          "rna_swap": {"accuracy": {"mean": 0.97},
                                                       "accuracy_drop": {"mean": -0.02}}}}}}
    rows = _cells(markdown_table(res))
    assert rows[0] == ["accuracy", "1/class", "10/class"]
    assert all(set(c) <= {"-", ":"} for c in rows[1])
    assert rows[2:] == [["late", "0.900 ± 0.012", "0.950 ± 0.010"], ["rna", "–", "0.500 ± 0.000"]]
    rob = _cells(robustness_table(res, 10))
    assert rob[0] == ["head", "clean", "noise", "rna_swap"]
    assert all(set(c) <= {"-", ":"} for c in rob[1])
    assert rob[2:] == [["late", "0.950", "0.930 (-0.020)", "0.970 (+0.020)"]]


def test_fewlabel_needs_labelled_training_and_test_cells():
    zr, zp, labels, split, _ = _embedding(60)
    with pytest.raises(InputError, match="at least 2 classes"):
        fewlabel_arrays(zr, zp, np.array([None] * 60, dtype=object), split, params=params(epochs=2),
                        labels_per_class=(1,), n_draws=1)
    with pytest.raises(InputError, match="no labelled 'holdout' cells"):
        fewlabel_arrays(zr, zp, labels, split, params=params(epochs=2), labels_per_class=(1,), n_draws=1,
                        eval_split="holdout")


def test_run_fewlabel_writes_json(tmp_path):
    import anndata as ad
    import pandas as pd

    zr, zp, labels, split, pcs = _embedding(300, seed=1)
    a = ad.AnnData(obs=pd.DataFrame({"ct": labels, "split": split}, index=[f"c{i}" for i in range(300)]))
    a.obsm["X_omicsclip_rna"], a.obsm["X_omicsclip_prot"], a.obsm["X_pca_rna"] = zr, zp, pcs
    a.uns["omicsclip"] = {"model_fingerprint": "fp"}
    with ad.settings.override(zarr_write_format=2):
        a.write_zarr(tmp_path / "emb.zarr")
    doc = run_fewlabel(tmp_path / "emb.zarr", tmp_path / "f.json", label_key="ct",
                       ignore_labels=EVALUATE["ignore_labels"], labels_per_class=(3,), n_draws=1,
                       section={**FINETUNE, "epochs": 20, "ensemble": 2, "mc_samples": 2}, n_pcs=EVALUATE["n_pcs"])
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["classes"] == ["a", "b", "c"] == doc["classes"]  # "unknown" ignored (evaluate.ignore_labels)
    assert saved["baseline_pcs"].startswith("obsm['X_pca_rna']")
    assert BASELINE in saved["methods"]
    assert saved["model_fingerprint"] == "fp"
    assert json.loads(json.dumps(saved)) == saved
    assert "bars" not in saved
    args = {"label_key": "ct", "ignore_labels": [], "labels_per_class": (3,), "n_draws": 1, "section": FINETUNE,
            "n_pcs": 5}
    with pytest.raises(InputError, match="already exists"):
        run_fewlabel(tmp_path / "emb.zarr", tmp_path / "f.json", **args)
    with pytest.raises(InputError, match="both --store and --model"):
        run_fewlabel(tmp_path / "emb.zarr", tmp_path / "g.json", **args, store=tmp_path)
