"""The Snakemake workflow: dry runs of every shipped config and profile, lint, config validation, failure cleanup.

Snakemake runs as this environment's ``snakemake`` executable in a subprocess, with this environment's bin folder
first on PATH so that rules call this ``omicsclip``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, SHARED_DATA, shared_h5ad

pytestmark = pytest.mark.workflow

BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"


def smk(args: list[str], workdir: Path, *, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the repo's Snakefile in ``workdir``."""
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), OMP_NUM_THREADS="1")
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1].split("Reasons:", 1)[0] if "Job stats:" in output else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M) if m[1] != "total"}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


STAGES = {"ingest", "inspect", "evaluate", "select", "embed", "index", "query", "finetune", "fewlabel", "report"}


def test_default_config_is_the_demo(tmp_path: Path) -> None:
    res = smk(["-n"], tmp_path)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    n_temps = len(demo["train"]["temperatures"])
    assert counts["synth"] == 1
    assert counts["train"] == n_temps
    assert counts["evaluate"] == n_temps
    assert all(counts[s] == 1 for s in STAGES - {"evaluate"})
    assert "results/demo/t0.05/model" in res.stdout
    assert "results/demo/report.html" in res.stdout


@pytest.mark.parametrize(("name", "data"), [("pbmc10k", "pbmc10k_protein_v3"), ("bremsc", "bremsc_inhouse_pbmc")])
def test_real_data_configs_dry_run(tmp_path: Path, name: str, data: str) -> None:
    h5ad = shared_h5ad(data)
    if SHARED_DATA.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip(f"the shipped configs name ../shared/data; OMICSCLIP_SHARED_DATA points at {SHARED_DATA}")
    cfg_path = REPO / "configs" / f"{name}.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    assert (REPO / cfg["datasets"][name]["input"]).resolve() == h5ad.resolve()
    res = smk(["-n", "--configfile", str(cfg_path)], tmp_path)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert "synth" not in counts
    assert "demo" not in res.stdout
    assert counts["train"] == len(cfg["train"]["temperatures"])
    # the workflow names the input by its absolute path; ../shared may be a symlink, so either spelling
    assert str(h5ad.resolve()) in res.stdout or os.path.abspath(h5ad) in res.stdout


def test_two_datasets_and_learnable_temperature(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "two.yaml", {
        "results_dir": "out",
        "datasets": {"a": {"synthetic": {"cells": 300}}, "b": {"synthetic": {"cells": 400}, "label_key": ""}},
        "train": {"learnable_temperature": True},
    })
    res = smk(["-n", "--configfile", str(cfg)], tmp_path)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    assert counts["synth"] == 2
    assert counts["train"] == 2
    assert counts["report"] == 2
    assert counts["finetune"] == 1
    assert counts["fewlabel"] == 1
    assert "out/a/tlearn/model" in res.stdout
    assert "out/b/report.html" in res.stdout


def test_slurm_profile_dry_run(tmp_path: Path) -> None:
    # --cores: a dry run caps threads at the local cores; on the cluster each job gets its own cpus-per-task
    res = smk(["-n", "--cores", "16", "--profile", str(REPO / "configs" / "profiles" / "slurm")], tmp_path)
    assert res.returncode == 0, res.stderr
    blocks = res.stdout.split("\n\n")
    train = [b for b in blocks if re.search(r"^\s*rule train:", b, re.M)]
    ingest = [b for b in blocks if re.search(r"^\s*rule ingest:", b, re.M)]
    assert len(train) == 3
    assert ingest
    for b in train:
        assert "gpu=1" in b
        assert "slurm_partition=<gpu-partition>" in b
        assert re.search(r"runtime=\d+", b)
        assert re.search(r"mem_mb=\d+", b)
        assert "threads: 8" in b
    assert "slurm_partition=<cpu-partition>" in ingest[0]
    assert "gpu=" not in ingest[0]


def test_local_profile_dry_run(tmp_path: Path) -> None:
    res = smk(["-n", "--profile", str(REPO / "configs" / "profiles" / "local")], tmp_path)
    assert res.returncode == 0, res.stderr
    assert job_counts(res.stdout)["train"] == 3


def test_lint_is_clean(tmp_path: Path) -> None:
    res = smk(["--lint"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations, your workflow is in a good condition" in res.stdout + res.stderr


def test_train_params_carry_the_config(tmp_path: Path) -> None:
    """Each run gets its own temperature, and the sweep list is not a param (adding a temperature retrains
    nothing else)."""
    cfg = write_config(tmp_path / "c.yaml", {"datasets": {"d": {"synthetic": {"cells": 300}}},
                                             "train": {"temperatures": [0.07, 1e-05], "weight_decay": 1e-05}})
    res = smk(["-n", "-p", "--configfile", str(cfg)], tmp_path)
    assert res.returncode == 0, res.stderr
    trains = [line for line in res.stdout.splitlines() if "omicsclip train" in line]
    assert len(trains) == 2
    assert any('"temperature": 0.07,' in t for t in trains)
    assert any('"temperature": 1.0e-05,' in t for t in trains)
    assert all('"weight_decay": 1.0e-05' in t and "temperatures" not in t for t in trains)
    assert "results/d/t1e-05/model" in res.stdout


def load_common(cfg: dict) -> dict:
    """Execute workflow/rules/common.smk as the Snakefile does (merge with defaults, validate); its namespace."""
    ns = {"workflow": SimpleNamespace(basedir=str(REPO), configfiles=["bad.yaml"]), "config": cfg}
    path = REPO / "workflow" / "rules" / "common.smk"
    saved = dict(os.environ)
    try:
        exec(compile(path.read_text(), str(path), "exec"), ns)  # noqa: S102 - the workflow's own helper file
    finally:  # common.smk exports OMICSCLIP_PIP_SPEC for --sdm conda; keep this process's environment as it was
        os.environ.clear()
        os.environ.update(saved)
    return ns


SYN = {"d": {"synthetic": {"cells": 300}}}
BAD_CONFIGS = [
    ({"datasets": SYN, "train": {"epochs": 3, "epoch": 4}},
     "config bad.yaml: train: Additional properties are not allowed ('epoch' was unexpected)"),
    ({"datasets": SYN, "train": {"epochs": "many"}}, "config bad.yaml: train.epochs: 'many' is not of type 'integer'"),
    ({"datasets": SYN, "train": {"temperatures": []}}, "train.temperatures: [] should be non-empty"),
    ({"datasets": SYN, "results_dir": 3}, "results_dir: 3 is not of type 'string'"),
    ({"datasets": {"d": {"input": "no/such/file.h5ad"}}}, "datasets.d.input: no/such/file.h5ad does not exist"),
    ({"datasets": {"d": {"input": ["a.h5ad", "b.h5ad", "c.h5ad"]}}}, "datasets.d.input"),
    ({"datasets": {"d": {"input": "x.h5ad", "synthetic": {"cells": 10}}}},
     "datasets.d: give exactly one of 'input' (files), 'synthetic' (generated data) or 'pool'"),
    ({"datasets": {"d": {"format": "h5ad"}}}, "datasets.d: give exactly one of"),
    ({"results_dir": "r"}, "datasets: missing"),
    ({"datasets": {"d": {"synthetic": {"cells": 0}}}}, "datasets.d.synthetic.cells: 0 is less than the minimum of 1"),
    ({"datasets": {"d": {"synthetic": {"cells": 10, "depth": 3}}}}, "('depth' was unexpected)"),
    ({"datasets": {"bad/name": {"synthetic": {"cells": 10}}}}, "does not match"),
]


@pytest.mark.parametrize(("cfg", "message"), BAD_CONFIGS, ids=[
    "unknown-key", "wrong-type", "empty-sweep", "results-dir-type", "missing-input", "three-inputs",
    "input-and-synthetic", "no-input", "no-datasets", "range", "unknown-synthetic-key", "dataset-name"])
def test_config_validation_messages(cfg: dict, message: str) -> None:
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError) as info:
        load_common(cfg)
    text = str(info.value)
    assert message in text
    assert "\n" not in text.strip()


def test_valid_config_helpers() -> None:
    ns = load_common({"datasets": {"a": {"synthetic": {"cells": 300, "seed": 2}},
                                   "b": {"synthetic": {"cells": 300}, "label_key": "celltype_l1"}},
                      "train": {"temperatures": [0.1, 0.1, 0.05]}})
    assert ns["RUNS"] == ["0.1", "0.05"]  # duplicates dropped, order kept
    assert ns["CFG"]["train"]["epochs"] == yaml.safe_load((REPO / "configs" / "default.yaml").read_text())[
        "train"]["epochs"]  # defaults filled in
    assert ns["synth_opts"]("a") == "--cells 300 --seed 2"
    yv = ns["yaml_value"]
    for value in (1e-05, 0.1, 3, True, None, "auto", "(?i)^igg", "1e-5", "yes", "", [512, 256],
                  {"a": [1.5e-07, "x y"]}):
        assert yaml.safe_load(yv(value)) == value
    opts = ns["train_opts"]("a", "0.05")
    assert '"temperature": 0.05' in opts
    assert "temperatures" not in opts
    assert '"learnable_temperature": false' in opts
    assert '"stratify": "cell_type"' in opts
    assert '"stratify": "celltype_l1"' in ns["train_opts"]("b", "learn")
    assert ns["labelled"]("a")
    assert ns["labelled"]("b")


YAML_VALUES = [1e-05, 0.1, 1.0, -0.0, 1e20, 2.5e-300, 3, -7, 0, True, False, None, "auto", "(?i)^igg", "1e-5",
               "1.0", "yes", "no", "null", "~", "", " lead", "x y", "it's", 'say "hi"', "a: b", "#c", "[x]", "{y}",
               "a\nb", "tab\tc", "ünï", "$HOME", "`x`", "a=b", [512, 256], [], {}, [[1, 2.0], ["s"]],
               {"a": [1.5e-07, "x y"], "k y": {"n": None}, "3": 3}]


@pytest.mark.parametrize("value", YAML_VALUES, ids=[repr(v)[:24] for v in YAML_VALUES])
def test_yaml_value_round_trips_through_the_shell(value: object) -> None:
    """A config value reaches the CLI's `--set key=VALUE` (parsed with yaml.safe_load) unchanged: one line,
    floats stay floats, strings stay strings, shell quoting is harmless."""
    import shlex

    from omicsclip.config import parse_override

    text = load_common({"datasets": SYN})["yaml_value"](value)
    assert "\n" not in text
    assert not text.endswith("...")
    assert yaml.safe_load(text) == value
    assert type(yaml.safe_load(text)) is type(value)
    if isinstance(value, float):
        assert "." in text.split("e")[0]
    (arg,) = shlex.split(shlex.quote(f"s.k={text}"))  # what the rule's shell passes on
    assert parse_override(arg) == {"s": {"k": value}}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), [1.0, float("nan")],
                                   {"a": {"b": float("inf")}}])
def test_yaml_value_refuses_non_finite(value: object) -> None:
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match=r"config value -?(nan|inf) cannot be passed to the CLI"):
        load_common({"datasets": SYN})["yaml_value"](value)


def test_yaml_value_refuses_other_types() -> None:
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="config value of type object cannot be passed to the CLI"):
        load_common({"datasets": SYN})["yaml_value"](object())


def test_unknown_key_is_refused_by_snakemake(tmp_path: Path) -> None:
    """The same validation runs inside snakemake, before any job, with the one-line message."""
    bad = write_config(tmp_path / "bad.yaml", {"datasets": SYN, "train": {"epoch": 4}})
    res = smk(["-n", "--configfile", str(bad)], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Traceback" not in out
    assert f"config {bad}: train: Additional properties are not allowed ('epoch' was unexpected)" in out


def test_missing_input_is_refused_by_snakemake(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.yaml", {"datasets": {"d": {"input": "nope/cells.h5ad"}}})
    res = smk(["-n", "--configfile", str(bad)], tmp_path)
    assert res.returncode != 0
    assert f"datasets.d.input: nope/cells.h5ad does not exist (resolved to {REPO}/nope/cells.h5ad" in (
        res.stdout + res.stderr)


def test_failed_job_leaves_no_output(tmp_path: Path) -> None:
    """A rule whose CLI fails leaves nothing Snakemake (or a user) would take as a finished output."""
    bad = tmp_path / "broken.h5ad"
    bad.write_text("this is not an HDF5 file\n")
    cfg = write_config(tmp_path / "c.yaml", {"datasets": {"broken": {"input": str(bad), "format": "h5ad"}}})
    res = smk(["results/broken/store.zarr", "--cores", "1", "--configfile", str(cfg)], tmp_path, timeout=180)
    assert res.returncode != 0
    assert "Error in rule ingest" in res.stdout + res.stderr
    ds = tmp_path / "results" / "broken"
    assert not (ds / "store.zarr").exists()
    assert not [p.name for p in ds.iterdir() if p.name.startswith(".store.zarr")]  # no half-written temporary
    log = (ds / "logs" / "ingest.log").read_text()
    assert "omicsclip: error:" in log
    assert "Traceback" not in log
    # the failure is not remembered as a success: a dry run still wants to ingest
    again = smk(["results/broken/store.zarr", "-n", "--configfile", str(cfg)], tmp_path)
    assert job_counts(again.stdout).get("ingest") == 1


def test_packaged_snakefile_takes_relative_inputs_from_the_working_directory(tmp_path: Path) -> None:
    """The packaged workflow/Snakefile (what an installed wheel runs) has no repository root: relative dataset
    inputs are taken from --directory; the checkout's top-level Snakefile keeps taking them from the root."""
    from omicsclip.workflow import snakefile

    cfg = write_config(tmp_path / "c.yaml", {"datasets": {"d": {"input": "data/cells.h5ad"}}})
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    cmd = [str(SNAKEMAKE), "--snakefile", str(snakefile()), "--directory", str(tmp_path), "-n", "--configfile",
           str(cfg)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode != 0
    assert f"resolved to {tmp_path}/data/cells.h5ad" in res.stdout + res.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cells.h5ad").write_text("")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert str(tmp_path / "data" / "cells.h5ad") in res.stdout
