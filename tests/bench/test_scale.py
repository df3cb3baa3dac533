"""bench/scale.py end to end at a tiny size (the real run takes hours): every stage, the rows and the summary."""

from __future__ import annotations

import json
import os

import pytest
from conftest import load_bench


@pytest.mark.slow
def test_small_scale_run_writes_every_stage(tmp_path):
    bench = load_bench("scale")
    out = tmp_path / "scale.json"
    result = bench.main(["--small", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    stages = {"ingest", "train_steps", "train", "train_epoch", "embed", "index", "query", "finetune", "predict"}
    assert {r["stage"] for r in result["rows"]} == stages
    for r in result["rows"]:
        assert r["cells"] in (1000, 2000)
        assert r["seconds"] > 0
        assert r["cells_per_s"] > 0
        assert r["peak_rss_mb"] is None if r["stage"] == "train_epoch" else r["peak_rss_mb"] > 50
    assert set(result["growth_exponent"]) == stages
    assert all(isinstance(e, float) for e in result["growth_exponent"].values())
    assert result["memory_at_largest"]["train"]["limit_mb"] == bench.TRAIN_MAX_MB
    assert result["memory_at_largest"]["embed"]["limit_mb"] == bench.NON_TRAIN_MAX_MB
    assert "bytes/cell" in next(r for r in result["rows"] if r["stage"] == "train")["footprint"]
    assert not any((tmp_path / "work").glob("n*")), "each size's outputs are removed after it ran"


def test_growth_exponent_is_the_log_log_slope():
    bench = load_bench("scale")
    assert bench.growth_exponent([1000, 10_000], [2.0, 20.0]) == pytest.approx(1.0)
    assert bench.growth_exponent([1000, 10_000, 100_000], [1.0, 1.0, 1.0]) == pytest.approx(0.0, abs=1e-9)
    assert bench.growth_exponent([1000], [1.0]) is None


def test_summary_and_report_from_rows(tmp_path):
    """The largest-two exponent isolates the top of the range; --report-only rebuilds summary and table from rows."""
    bench = load_bench("scale")
    rows = [{"stage": "query", "cells": n, "seconds": s, "peak_rss_mb": 100.0, "cells_per_s": n / s}
            for n, s in ((1000, 10.0), (2000, 10.0), (4000, 40.0))]
    summary = bench.summarise(rows)
    assert summary["growth_exponent_largest_two"]["query"] == pytest.approx(2.0)
    assert summary["growth_exponent"]["query"] == pytest.approx(bench.growth_exponent([1000, 2000, 4000],
                                                                                       [10.0, 10.0, 40.0]))
    out = tmp_path / "scale.json"
    out.write_text(json.dumps({"rows": rows, "settings": {"sizes": [1000, 2000, 4000]}}))
    bench.main(["--report-only", "--out", str(out)])
    assert json.loads(out.read_text())["growth_exponent_largest_two"]["query"] == pytest.approx(2.0)
    table = out.with_suffix(".md").read_text()
    assert "| query | 10 (100), 100 | 10 (200), 100 | 40 (100), 100 |" in table
    assert table.rstrip().endswith("| 2.00 |")


def test_stage_peak_is_the_stage_own_not_the_bench(tmp_path):
    """A stage's peak RSS is its own: not floored by the bench process's memory (as wait4's ru_maxrss is)."""
    import numpy as np

    bench = load_bench("scale")
    ballast = np.ones(1024 * 1024 * 1024 // 8)  # 1 GiB held (and touched) by the bench process
    seconds, peak_mb = bench.run_stage(["--help"], tmp_path / "help.log", dict(os.environ))
    assert ballast[-1] == 1.0
    assert seconds > 0
    assert 20 < peak_mb < 700, peak_mb


def test_bad_modes_stop_with_one_line_before_any_data_is_drawn(tmp_path):
    """--stages without a kept run, an unreadable --out and clashing modes stop the bench with a message."""
    bench = load_bench("scale")
    work = tmp_path / "work"
    with pytest.raises(SystemExit, match="needs the outputs of an earlier --keep run"):
        bench.main(["--stages", "predict", "--sizes", "1000", "--workdir", str(work),
                    "--out", str(tmp_path / "s.json")])
    assert not any(work.glob("base_*")), "no base data drawn for a rerun that cannot run"
    with pytest.raises(SystemExit, match="unknown stage"):
        bench.main(["--stages", "bogus", "--workdir", str(work), "--out", str(tmp_path / "s.json")])
    with pytest.raises(SystemExit, match="not a bench/scale.py result"):
        bench.main(["--report-only", "--out", str(tmp_path / "missing.json")])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not a bench/scale.py result"):
        bench.main(["--report-only", "--out", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit) as exc:
        bench.main(["--stages", "predict", "--report-only"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_stages_rerun_replaces_only_those_rows(tmp_path):
    """--keep, then --stages ingest predict: those rows are measured again, every other row is kept as it was."""
    bench = load_bench("scale")
    work, out = tmp_path / "work", tmp_path / "scale.json"
    first = bench.main(["--small", "--keep", "--workdir", str(work), "--out", str(out)])
    logs = {p.name: p.stat().st_mtime_ns for p in (work / "n2000").glob("*.log")}
    second = bench.main(["--small", "--stages", "ingest", "predict", "--workdir", str(work), "--out", str(out)])
    rerun = {p.name for p in (work / "n2000").glob("*.log") if p.stat().st_mtime_ns != logs[p.name]}
    assert rerun == {"ingest.log", "predict.log"}, "only those stages ran again"
    key = lambda r: (r["stage"], r["cells"])  # noqa: E731
    before, after = {key(r): r for r in first["rows"]}, {key(r): r for r in second["rows"]}
    assert before.keys() == after.keys()
    for k, row in after.items():
        if k[0] in ("ingest", "predict"):
            assert row["peak_rss_source"] == "VmHWM"
            assert row["peak_rss_mb"] > 50
        else:
            assert row == before[k]
    assert (work / "n2000" / "predictions.tsv").is_file()
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(second["rows"]))
