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


@pytest.fixture(scope="module")
def boot():
    sys.path.insert(0, str(REPO / "bench"))
    return importlib.import_module("pooled_bootstrap")


def test_dataset_bootstrap_ratios_and_intervals(boot):
    import numpy as np

    rng = np.random.default_rng(0)
    own = [rng.uniform(0, 0.1, 300) for _ in range(2)]
    same = boot.dataset_bootstrap(own, [o.copy() for o in own], n_boot=200, seed=0)
    assert same["ratio_of_means_over_seeds"]["ratio"] == pytest.approx(1.0)
    assert same["ratio_of_means_over_seeds"]["ci95"] == pytest.approx([1.0, 1.0])  # paired: every resample 1
    assert same["ratio_of_means_over_seeds"]["p_within_bar"] == 1.0
    worse = boot.dataset_bootstrap(own, [o * 1.2 + rng.uniform(0, 0.01, 300) for o in own], n_boot=200, seed=0)
    for r, o in zip(worse["per_seed"], own, strict=True):
        assert r["own"] == pytest.approx(o.mean())
        assert r["ci95"][0] < r["ratio"] < r["ci95"][1]
        assert r["ci95"][0] > 1.05
    assert worse["ratio_of_means_over_seeds"]["p_within_bar"] == 0.0
    assert worse["n_cells"] == 300


def test_pooled_bootstrap_reproduces_evaluate_on_a_workdir(boot, tmp_path):
    """A tiny workdir laid out as bench/pooled.py --train-seeds 0 leaves it: the per-cell FOSCTTM averages to
    what omicsclip evaluate wrote, for the per-dataset and the pooled model."""
    import numpy as np
    from conftest import TINY

    from omicsclip.config import load_config
    from omicsclip.evaluation.evaluate import run_evaluate
    from omicsclip.io.pool import pool_stores
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.train.run import train_model

    d = make_synthetic(n_cells=400, n_genes=60, n_proteins=8, n_types=3, seed=1)
    parts = {"a": d.subset(np.arange(200)), "b": d.subset(np.arange(200, 400))}
    parts["b"].prot, parts["b"].proteins = parts["b"].prot[:, 2:], parts["b"].proteins.iloc[2:]
    cfg = load_config(None, [*TINY, "train.seed=0"])
    stores = {n: write_store(p, tmp_path / f"{n}.zarr") for n, p in parts.items()}
    pooled = pool_stores(list(stores.values()), tmp_path / "pooled_union.zarr", names=list(stores))
    models = {n: tmp_path / f"model_{n}_t0" for n in stores}
    pooled_model = tmp_path / "model_pooled_default_union_t0"
    for store, model in [*((stores[n], models[n]) for n in stores), (pooled, pooled_model)]:
        train_model(store, model, cfg)
    for n in stores:  # as bench/pooled.py: each dataset's own model on its store, the pooled model per dataset
        for store, model, dataset, out in ((stores[n], models[n], None, f"m_{n}_t0.json"),
                                           (pooled, pooled_model, n, f"m_pooled_default_union_{n}_t0.json")):
            run_evaluate(store, model, tmp_path / out, evaluate_cfg=cfg["evaluate"], query_cfg=cfg["query"],
                         dataset=dataset)
    res = boot.main([str(tmp_path), "--seeds", "0", "--datasets", "a", "b", "--n-boot", "50",
                     "--out", str(tmp_path / "boot.json")])
    for n in stores:
        checks = res["datasets"][n]["parity_with_evaluate"]
        assert len(checks) == 2
        for c in checks:
            assert c["mean_here"] == pytest.approx(c["evaluate"], abs=1e-9)
        r = res["datasets"][n]["per_seed"][0]
        assert r["ratio"] == pytest.approx(r["pooled"] / r["own"])
    with pytest.raises(SystemExit, match=r"not in the workdir: .*model_a_t1"):
        boot.main([str(tmp_path), "--seeds", "0,1", "--datasets", "a", "b", "--out", str(tmp_path / "x.json")])
    (tmp_path / "c.zarr").symlink_to(tmp_path / "a.zarr")  # a store and models of a dataset the pool lacks
    (tmp_path / "model_c_t0").symlink_to(models["a"])
    with pytest.raises(SystemExit, match=r"--datasets c: not in pooled_union.zarr \(it pools a, b\)"):
        boot.main([str(tmp_path), "--seeds", "0", "--datasets", "c", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match=r"no such workdir"):
        boot.main([str(tmp_path / "nowhere"), "--seeds", "0", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):  # argparse: --n-boot must be a positive integer
        boot.main([str(tmp_path), "--seeds", "0", "--datasets", "a", "--n-boot", "0", "--out", str(tmp_path / "x.json")])
