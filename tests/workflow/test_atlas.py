"""Atlas training on GPU nodes: the slurm-atlas profile runs each training run as one multi-GPU torchrun job.

Dry runs (``snakemake -n -p``) of the demo dataset with ``configs/atlas_gpu.yaml`` and the profile: the GPUs come
from the train rule's ``gpu`` resource, the printed command starts one torchrun process per GPU, and the SLURM job
step that runs it is ``srun --gpus=<gpu>``. The default profiles keep the single-process command.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO
from test_workflow import job_counts, load_common, smk

pytestmark = pytest.mark.workflow

PROFILES = REPO / "configs" / "profiles"
ATLAS = REPO / "configs" / "atlas_gpu.yaml"
DEMO = REPO / "configs" / "demo.yaml"


def blocks_of(output: str, rule: str) -> list[str]:
    """The dry run's job blocks of ``rule`` (header, resources and shell command)."""
    return [b for b in output.split("\n\n") if re.search(rf"^\s*rule {rule}:", b, re.M)]


def atlas_gpus() -> int:
    return yaml.safe_load((PROFILES / "slurm-atlas" / "config.yaml").read_text())["set-resources"]["train"]["gpu"]


def test_train_launcher() -> None:
    launch = load_common({"datasets": {"d": {"synthetic": {"cells": 300}}}})["train_launcher"]
    assert launch(0) == "omicsclip"
    assert launch(1) == "omicsclip"
    assert launch(None) == "omicsclip"
    assert launch(4) == "torchrun --standalone --nproc_per_node=4 --no-python omicsclip"


def test_atlas_profile_dry_run_is_a_torchrun_job(tmp_path: Path) -> None:
    gpus = atlas_gpus()
    assert gpus > 1
    res = smk(["-n", "-p", "--cores", "64", "--profile", str(PROFILES / "slurm-atlas"),
               "--configfile", str(DEMO), str(ATLAS)], tmp_path)
    assert res.returncode == 0, res.stderr
    atlas = yaml.safe_load(ATLAS.read_text())["train"]
    assert job_counts(res.stdout)["train"] == len(atlas["temperatures"])
    (train,) = blocks_of(res.stdout, "train")
    assert re.search(rf"resources: .*\bgpu={gpus}\b", train)
    assert "slurm_partition=<gpu-partition>" in train
    assert "threads: 32" in train
    cmd = train.split("Shell command:", 1)[1]
    assert cmd.lstrip().startswith(
        f"torchrun --standalone --nproc_per_node={gpus} --no-python omicsclip train results/demo/store.zarr")
    # the atlas settings reach the CLI: global batch, precision, device, the measured temperature
    assert f'"batch_size": {atlas["batch_size"]}' in cmd
    assert '"precision": "bf16"' in cmd
    assert '"device": "cuda"' in cmd
    assert f'"temperature": {atlas["temperature"]}' in cmd
    assert atlas["batch_size"] % gpus == 0
    embed = blocks_of(res.stdout, "embed")[0]
    assert re.search(r"resources: .*\bgpu=1\b", embed)
    assert "torchrun" not in embed


def test_slurm_job_step_runs_it_under_srun_with_the_gpus() -> None:
    """snakemake-executor-plugin-slurm-jobstep runs a non-MPI job as ``srun -n1 ... --gpus=<gpu>``: torchrun then
    starts its processes inside that step (no nested srun in the rule)."""
    jobstep = pytest.importorskip("snakemake_executor_plugin_slurm_jobstep")
    gpus = atlas_gpus()
    job = SimpleNamespace(resources={"gpu": gpus, "slurm_partition": "gpu"})
    assert jobstep.get_gpu_setting(job) == f"--gpus={gpus}"
    assert "mpi" not in yaml.safe_load((PROFILES / "slurm-atlas" / "config.yaml").read_text())["set-resources"][
        "train"]


@pytest.mark.parametrize("profile", ["slurm", "local"])
def test_default_profiles_keep_one_process(tmp_path: Path, profile: str) -> None:
    res = smk(["-n", "-p", "--cores", "16", "--profile", str(PROFILES / profile)], tmp_path)
    assert res.returncode == 0, res.stderr
    trains = blocks_of(res.stdout, "train")
    assert len(trains) == 3
    for b in trains:
        assert b.split("Shell command:", 1)[1].lstrip().startswith("omicsclip train ")
        assert "torchrun" not in b
