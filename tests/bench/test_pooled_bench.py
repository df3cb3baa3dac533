"""bench/pooled.py: the spread of the pooled/per-dataset ratio across training seeds (``--train-seeds``)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def pooled():
    sys.path.insert(0, str(REPO / "bench"))
    return importlib.import_module("pooled")


def _rows(own: dict[str, float], pooled: dict[str, float]) -> dict[str, dict]:
    rows = {f"{n}/own": {"test_foscttm": v} for n, v in own.items()}
    rows.update({f"{n}/pooled_default": {"test_foscttm": v} for n, v in pooled.items()})
    return rows


def test_seed_summary_ratios(pooled):
    per_seed = {0: _rows({"a": 0.10, "b": 0.20}, {"a": 0.106, "b": 0.19}),
                1: _rows({"a": 0.12, "b": 0.20}, {"a": 0.12, "b": 0.22})}
    s = pooled.seed_summary(per_seed, ["a", "b"], ["pooled_default"])
    assert s["train_seeds"] == [0, 1]
    a = s["datasets"]["a"]
    assert a["own_vs_own_first_seed"] == pytest.approx([1.0, 1.2])
    assert a["pooled_default"]["ratio_per_seed"] == pytest.approx([1.06, 1.0])
    assert a["pooled_default"]["ratio_of_means"] == pytest.approx(0.226 / 0.22)
    assert a["pooled_default"]["seeds_within_5pct"] == 1
    b = s["datasets"]["b"]["pooled_default"]
    assert (b["ratio_min"], b["ratio_max"]) == pytest.approx((0.95, 1.1))
    assert b["seeds_within_5pct"] == 1
    table = pooled.seed_table(s, ["pooled_default"])
    assert any("1.060 / 1.000" in line for line in table)


@pytest.mark.parametrize(("args", "message"), [
    (["--train-seeds", "0,x"], "not comma-separated integers"),
    (["--train-seeds", "0,1", "--set", "train.seed=3"], "both set the training seed"),
])
def test_train_seeds_errors(args, message, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pooled.py"), *args, "--workdir", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("script", "args", "message"), [
    ("pooled.py", ["--variants", "pooled_default"], "no .h5ad in"),
    ("transfer_query_sweep.py", ["WORK", "--pairs", "pbmc10k:bremsc", "--grid", "impute_k=10", "--out", "OUT"],
     "no such file"),
])
def test_benches_without_the_shared_data_exit_with_one_line(script, args, message, tmp_path):
    args = [str(tmp_path / "w") if a == "WORK" else str(tmp_path / "o.json") if a == "OUT" else a for a in args]
    extra = ["--workdir", str(tmp_path / "w")] if script == "pooled.py" else []
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, *extra], capture_output=True,
                          text=True, check=False, env={**os.environ, "OMICSCLIP_SHARED_DATA": str(tmp_path / "none")})
    assert proc.returncode != 0
    assert message in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
