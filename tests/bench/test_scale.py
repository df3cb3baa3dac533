"""bench/scale.py end to end at a tiny size (the real run takes hours): every stage, the rows and the summary."""

from __future__ import annotations

import json

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
