"""A pooled dataset in the workflow (`datasets: {pooled: {pool: [a, b]}}`): the pool rule, training within one
member per batch, evaluation per member, and one-line messages for a bad `pool`."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_workflow import job_counts, load_common, smk, write_config

pytestmark = pytest.mark.workflow

MEMBERS = {"a": {"synthetic": {"cells": 300, "proteins": 20, "seed": 1}, "label_key": "cell_type"},
           "b": {"synthetic": {"cells": 300, "proteins": 12, "seed": 2}, "label_key": "cell_type"}}
POOLED = {**MEMBERS, "pooled": {"pool": ["a", "b"], "label_key": "cell_type"}}


def test_pooled_dataset_dry_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "pooled.yaml", {"datasets": POOLED, "train": {"temperatures": [0.1, 0.2]}})
    res = smk(["-n", "-p", "--configfile", str(cfg)], tmp_path)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["ingest"] == 2  # the members; the pooled store comes from `pool`
    assert counts["pool"] == 1
    assert counts["train"] == 6
    assert counts["evaluate"] == 4  # a and b, two runs each
    assert counts["evaluate_member"] == 4  # pooled: each member, two runs each
    assert counts["pooled_metrics"] == 2
    assert counts["report"] == 3
    out = res.stdout
    assert ("omicsclip pool results/a/store.zarr results/b/store.zarr --names a,b "
            "--out results/pooled/store.zarr") in out
    for t in ("0.1", "0.2"):
        for m in ("a", "b"):
            assert (f"--model results/pooled/t{t}/model --out results/pooled/t{t}/metrics_{m}.json "
                    f"--dataset {m} ") in out
        assert (f"omicsclip merge-metrics a=results/pooled/t{t}/metrics_a.json b=results/pooled/t{t}/metrics_b.json "
                f"--out results/pooled/t{t}/metrics.json") in out
    trains = {line.split("--out ", 1)[1].split()[0]: line for line in out.splitlines() if "omicsclip train" in line}
    assert all('"batch_key": "dataset"' in trains[f"results/pooled/t{t}/model"] for t in ("0.1", "0.2"))
    assert all('"batch_key": "auto"' in trains[f"results/{d}/t0.1/model"] for d in ("a", "b"))  # the default


def test_pooled_dataset_helpers() -> None:
    ns = load_common({"datasets": POOLED})
    assert ns["POOLED"] == ["pooled"]
    assert ns["pool_members"]("pooled") == ["a", "b"]
    assert ns["pool_members"]("a") == []
    assert '"batch_key": "dataset"' in ns["train_opts"]("pooled", "0.1")
    assert '"stratify": "cell_type"' in ns["train_opts"]("pooled", "0.1")
    assert ns["MEMBER_METRICS"] == [f"results/pooled/t{t}/metrics_{m}.json" for t in ns["RUNS"] for m in "ab"]
    report = ns["report_config_opts"]("pooled")  # the provenance names the members too
    assert '"pool": ["a", "b"]' in report
    assert '"a": {"synthetic"' in report
    # a batch key the user set (even "" = off) is kept
    kept = load_common({"datasets": POOLED, "train": {"batch_key": ""}})
    assert '"batch_key": ""' in kept["train_opts"]("pooled", "0.1")


BAD_POOLS = [
    ({**MEMBERS, "p": {"pool": ["a"]}}, "datasets.p.pool: list at least two other datasets of this config"),
    ({**MEMBERS, "p": {"pool": "a"}}, "datasets.p.pool: list at least two other datasets of this config"),
    ({**MEMBERS, "p": {"pool": ["a", "c"]}}, "datasets.p.pool: 'c' is not a dataset of this config (datasets: a, b, p)"),
    ({**MEMBERS, "p": {"pool": ["a", "p"]}}, "datasets.p.pool: a dataset cannot pool itself"),
    ({**MEMBERS, "p": {"pool": ["a", "a"]}}, "datasets.p.pool: 'a' is listed twice"),
    ({**POOLED, "p": {"pool": ["a", "pooled"]}}, "datasets.p.pool: 'pooled' is itself pooled; list its datasets"),
    ({**MEMBERS, "p": {"pool": ["a", "b"], "synthetic": {"cells": 10}}},
     "datasets.p: give exactly one of 'input' (files), 'synthetic' (generated data) or 'pool'"),
]


@pytest.mark.parametrize(("datasets", "message"), BAD_POOLS, ids=[
    "one-member", "not-a-list", "unknown-member", "itself", "twice", "nested", "pool-and-synthetic"])
def test_bad_pool_messages(datasets: dict, message: str) -> None:
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError) as info:
        load_common({"datasets": datasets})
    text = str(info.value)
    assert message in text
    assert "\n" not in text.strip()


def test_bad_pool_is_refused_by_snakemake(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.yaml", {"datasets": {**MEMBERS, "p": {"pool": ["a", "c"]}}})
    res = smk(["-n", "--configfile", str(bad)], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Traceback" not in out
    assert f"config {bad}: datasets.p.pool: 'c' is not a dataset of this config (datasets: a, b, p)" in out
