"""A pooled reference's per-dataset metrics merged into one file (the workflow's `select` and report read it)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from omicsclip.cli.main import app
from omicsclip.errors import InputError
from omicsclip.evaluation.merge import merge_member_metrics


def member(foscttm, val, n, proteins, fp="abc"):
    return {"methods": {"omicsclip": {"foscttm": foscttm, "fewlabel_accuracy": None},
                        "ridge": {"protein_pearson": 0.5}},
            "validation": {"n_val_cells": n // 10, "foscttm": val}, "n_test_cells": n, "seed": 0,
            "protein_pearson_per_protein": {"omicsclip": proteins}, "model_fingerprint": fp, "dataset": "x"}


def test_every_metric_is_the_mean_over_members_and_members_are_kept():
    a = member(0.04, 0.03, 700, {"CD3": 0.9, "CD4": 0.8})
    b = member(0.10, 0.09, 140, {"CD3": 0.7})
    m = merge_member_metrics({"a": a, "b": b})
    assert m["methods"]["omicsclip"]["foscttm"] == pytest.approx(0.07)  # each dataset counts once
    assert m["methods"]["omicsclip"]["fewlabel_accuracy"] is None
    assert m["validation"]["foscttm"] == pytest.approx(0.06)
    assert m["validation"]["n_val_cells"] == 84
    assert m["n_test_cells"] == 840
    assert m["protein_pearson_per_protein"]["omicsclip"] == {"CD3": pytest.approx(0.8), "CD4": pytest.approx(0.8)}
    assert m["members"]["b"] == b
    assert m["dataset"] is None
    with pytest.raises(InputError, match="different models"):
        merge_member_metrics({"a": a, "b": member(0.1, 0.1, 10, {}, fp="other")})


def test_merge_metrics_cli(tmp_path):
    paths = []
    for name, f in (("a", 0.02), ("b", 0.06)):
        paths.append(tmp_path / f"m_{name}.json")
        paths[-1].write_text(json.dumps(member(f, f, 100, {"CD3": f})))
    out = tmp_path / "metrics.json"
    runner = CliRunner()
    res = runner.invoke(app, ["merge-metrics", f"a={paths[0]}", f"b={paths[1]}", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["methods"]["omicsclip"]["foscttm"] == pytest.approx(0.04)
    res = runner.invoke(app, ["merge-metrics", f"a={paths[0]}", "--out", str(out)])
    assert res.exit_code != 0  # never overwritten without --overwrite
    res = runner.invoke(app, ["merge-metrics", str(paths[0]), "--out", str(tmp_path / "x.json")])
    assert res.exit_code != 0
    assert "NAME=METRICS.json" in res.output
    assert not (tmp_path / "x.json").exists()
