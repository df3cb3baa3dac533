"""configs/atlas_gpu.yaml: validates against the schema, holds what docs/workflow.md says, follows the measured rules."""

from __future__ import annotations

import json
import math
import re

import yaml
from conftest import REPO

from omicsclip.config import config_path, default_config, load_config

ATLAS = config_path("atlas_gpu.yaml")
DOCS = REPO / "docs" / "workflow.md"
SWEEP = REPO / "bench" / "results" / "batch_sweep.json"
PROFILE = config_path("profiles/slurm-atlas/config.yaml")


def documented() -> dict[str, str]:
    """``section.key -> value`` of the settings table in docs/workflow.md's "Atlas training on GPU nodes"."""
    text = DOCS.read_text().split("## Atlas training on GPU nodes", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[2].strip() for m in re.finditer(r"^\| `(\w+\.\w+)` \| ([^|]+) \|", text, re.M)}


def test_loads_with_the_project_loader_and_overrides_only_known_keys() -> None:
    cfg = load_config(ATLAS)  # validated against configs/schema.yaml
    raw = yaml.safe_load(ATLAS.read_text())
    defaults = default_config()
    for section, values in raw.items():
        assert set(values) <= set(defaults[section]), section
        assert all(cfg[section][k] == v for k, v in values.items())


def test_every_setting_says_why() -> None:
    for line in ATLAS.read_text().splitlines():
        if re.match(r"^\s+\w+:\s*\S", line):
            assert "#" in line, f"configs/atlas_gpu.yaml: no comment on {line.strip()!r}"


def test_documented_values_are_the_config() -> None:
    cfg = load_config(ATLAS)
    docs = documented()
    assert {"train.batch_size", "train.lr", "train.warmup_steps", "train.temperature", "train.precision",
            "train.device", "train.data_on_device", "train.logit_chunk_size", "model.members"} <= set(docs)
    for key, text in docs.items():
        section, name = key.split(".")
        assert cfg[section][name] == yaml.safe_load(text.replace(",", "")), key


def test_gpu_atlas_settings() -> None:
    tr = load_config(ATLAS)["train"]
    assert 16_384 <= tr["batch_size"] <= 65_536
    assert tr["precision"] == "bf16"
    assert tr["device"] == "cuda"
    assert 0 < tr["logit_chunk_size"] < tr["batch_size"]
    assert tr["temperatures"] == [tr["temperature"]]
    gpus = yaml.safe_load(PROFILE.read_text())["set-resources"]["train"]["gpu"]
    assert tr["batch_size"] % gpus == 0  # the global batch splits evenly over the torchrun processes


def test_lr_warmup_and_temperature_follow_the_sweep() -> None:
    d, tr = default_config()["train"], load_config(ATLAS)["train"]
    ratio = tr["batch_size"] / d["batch_size"]
    assert math.isclose(tr["lr"], d["lr"] * math.sqrt(ratio), rel_tol=0.02)  # square-root scaling
    assert tr["warmup_steps"] == round(d["warmup_steps"] * math.sqrt(ratio))  # warm-up scaled the same way
    assert tr["min_steps"] >= 3 * tr["warmup_steps"]
    won = json.loads(SWEEP.read_text())["validation_winners"]
    assert tr["temperature"] == won["temperature"]
    rules = won["lr_rule_mean_ratio_to_best"]
    assert rules["constant"] > rules["sqrt"]  # the measured reason to scale the learning rate at all
    assert rules["sqrt-warmup"] <= rules["sqrt"]  # ... and the warm-up with it
