"""Run-output parsing shared by ``omicsclip select`` and the report, on small hand-written run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from omicsclip.errors import InputError
from omicsclip.evaluation.selection import (
    load_run,
    parse_validation,
    run_label,
    run_temperature,
    select_best,
    write_selection,
)


def _run(root: Path, name: str, validation: dict | None, log: list[dict] | None = None) -> Path:
    run = root / name
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.json").write_text("{}")
    metrics = {"methods": {"omicsclip": {"recall_at_10": 0.5}}}
    if validation is not None:
        metrics["validation"] = validation
    (run / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (run / "model" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return run


def test_parse_validation_layouts() -> None:
    assert parse_validation({}) is None
    assert parse_validation({"validation": {}}) is None
    flat = parse_validation({"validation": {"val_recall_at_10": 0.5, "foscttm": 0.1, "n_val_cells": 60,
                                            "celltype_match": None, "ok": True}})
    assert flat == {"recall_at_10": 0.5, "foscttm": 0.1, "n_val_cells": 60.0}
    nested = parse_validation({"validation": {"omicsclip": {"recall_at_10": 0.7}, "cca": {"recall_at_10": 0.9}}})
    assert nested == {"recall_at_10": 0.7}
    assert parse_validation({"validation": {"recall_at_10": math.inf, "foscttm": 0.2}}) == {"foscttm": 0.2}


def test_run_label_and_temperature() -> None:
    assert run_label("results/d/t0.05") == "0.05"
    assert run_label("results/d/best") == "best"
    assert run_label("results/d/t") == "t"
    assert run_temperature("0.05", [{"temperature": 0.2}]) == 0.05
    assert run_temperature("learned", [{"temperature": 0.2}, {"temperature": 0.07}]) == 0.07
    assert run_temperature("learned", [{"epoch": 1}]) is None


def test_load_run_reads_what_is_there(tmp_path: Path) -> None:
    run = _run(tmp_path, "learned", {"recall_at_10": 0.4}, log=[{"epoch": 1, "temperature": 0.08}])
    data = load_run(run)
    assert data.label == "learned"
    assert data.temperature == 0.08
    assert data.validation == {"recall_at_10": 0.4}
    assert len(data.log) == 1
    assert data.model_meta == {}
    (run / "metrics.json").write_text(json.dumps({"methods": {"omicsclip": 1}}))
    with pytest.raises(InputError, match="'methods' must map"):
        load_run(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither model/train_log.jsonl nor metrics.json"):
        load_run(tmp_path / "empty")


def test_select_learned_temperature_and_strict_json(tmp_path: Path) -> None:
    a = _run(tmp_path, "learned", {"recall_at_10": 0.6, "foscttm": math.nan},
             log=[{"epoch": 1, "temperature": 0.09}])
    b = _run(tmp_path, "t0.1", {"recall_at_10": 0.6, "foscttm": 0.1})
    sel = select_best([a / "metrics.json", b / "metrics.json"])
    assert sel["selected"] == "0.1"  # tie on recall@10 broken by FOSCTTM (the NaN one ranks last)
    assert sel["runs"][0]["temperature"] == 0.09
    sel["note"] = math.nan  # strict JSON: written as null by the one JSON writer
    write_selection(sel, tmp_path / "sel.json")
    text = (tmp_path / "sel.json").read_text()
    assert text.endswith("}\n")
    assert json.loads(text)["note"] is None
