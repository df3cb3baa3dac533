# Helper Python for the omicsclip workflow: config merging and validation, dataset inputs (files, generated data or
# the stores of a pooled dataset's members), run names, per-stage `--set` options and resource estimates. Rules
# live in the other .smk files.

import math
import os
import re
import shlex
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from omicsclip.config import deep_merge, default_config, validate_config
from omicsclip.errors import InputError
from omicsclip.io.panels import DATASET_COLUMN
from omicsclip import workflow as workflow_package
from omicsclip.workflow.install import ENV_VAR, pip_spec

# Relative dataset inputs: from the repository root when run through the checkout's top-level Snakefile (the
# shipped configs name ../shared/data/...), from the working directory (--directory) when run through the
# packaged workflow/Snakefile (an installed wheel has no repository).
PACKAGED = Path(workflow.basedir).resolve() == Path(workflow_package.__file__).resolve().parent
REPO = Path(os.getcwd()) if PACKAGED else Path(workflow.basedir)
CONFIG_SOURCE = "config " + (", ".join(map(str, workflow.configfiles)) or "(--config)")

# --sdm conda: envs/omicsclip.post-deploy.sh installs into the rules' environment the omicsclip running this
# workflow (its wheel, its checkout or its release), with the pip arguments exported here.
try:
    os.environ[ENV_VAR] = pip_spec()
except PackageNotFoundError:  # omicsclip importable but not installed: the post-deploy script says so
    pass


DATASET_KINDS = ("input", "synthetic", "pool")


def check_pool(name, members, datasets):
    """A pooled dataset lists two or more other, non-pooled datasets of the same config."""
    where = f"{CONFIG_SOURCE}: datasets.{name}.pool"
    if not isinstance(members, list) or len(members) < 2:
        raise WorkflowError(f"{where}: list at least two other datasets of this config, e.g. pool: [a, b]")
    for member in members:
        if member == name:
            raise WorkflowError(f"{where}: a dataset cannot pool itself")
        if not isinstance(member, str) or member not in datasets:
            raise WorkflowError(f"{where}: {member!r} is not a dataset of this config "
                                f"(datasets: {', '.join(map(str, datasets))})")
        if isinstance(datasets[member], dict) and "pool" in datasets[member]:
            raise WorkflowError(f"{where}: {member!r} is itself pooled; list its datasets instead")
        if members.count(member) > 1:
            raise WorkflowError(f"{where}: {member!r} is listed twice")


def merged_config(user_config):
    """configs/default.yaml <- the workflow config, validated with one-line messages."""
    datasets = user_config.get("datasets")
    if not datasets:
        raise WorkflowError(
            f"{CONFIG_SOURCE}: datasets: missing; list at least one dataset, e.g. "
            "datasets: {demo: {synthetic: {cells: 3000}}} (see docs/workflow.md)"
        )
    for name, entry in datasets.items() if isinstance(datasets, dict) else ():
        if isinstance(entry, dict) and sum(kind in entry for kind in DATASET_KINDS) != 1:
            raise WorkflowError(
                f"{CONFIG_SOURCE}: datasets.{name}: give exactly one of 'input' (files), 'synthetic' (generated "
                "data) or 'pool' (other datasets of this config, trained on together)"
            )
        if isinstance(entry, dict) and "pool" in entry:
            check_pool(name, entry["pool"], datasets)
    cfg = deep_merge(default_config(), dict(user_config))
    try:
        validate_config(cfg, source=CONFIG_SOURCE)
    except InputError as exc:
        raise WorkflowError(str(exc)) from None
    return cfg


def resolve_input(path):
    """Relative dataset inputs are taken from REPO (the repository root, or the working directory)."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else Path(os.path.normpath(REPO / p))


def check_inputs(cfg):
    """Refuse a config whose dataset input files are missing, naming the key and the resolved path."""
    for name, entry in cfg["datasets"].items():
        if "input" not in entry:
            continue
        paths = entry["input"] if isinstance(entry["input"], list) else [entry["input"]]
        for raw in paths:
            if not resolve_input(raw).exists():
                raise WorkflowError(
                    f"{CONFIG_SOURCE}: datasets.{name}.input: {raw} does not exist "
                    f"(resolved to {resolve_input(raw)}; relative paths are taken from {REPO})"
                )


def dataset_inputs(dataset):
    """The raw input file(s) of ``dataset``: the generated .h5ad for synthetic ones."""
    entry = CFG["datasets"][dataset]
    if "synthetic" in entry:
        return [f"{CFG['results_dir']}/{dataset}/synthetic.h5ad"]
    raw = entry["input"] if isinstance(entry["input"], list) else [entry["input"]]
    return [str(resolve_input(p)) for p in raw]


def pool_members(dataset):
    """The datasets a pooled dataset is trained on, in config order ([] for an ordinary dataset)."""
    return list(CFG["datasets"][dataset].get("pool", []))


def pool_inputs(wildcards):
    """The stores a pooled dataset is pooled from."""
    return [f"{CFG['results_dir']}/{m}/store.zarr" for m in pool_members(wildcards.dataset)]


def name_pattern(names):
    """A wildcard constraint matching exactly ``names`` (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def member_metrics(cfg, runs):
    """Test metrics of each member of each pooled dataset, per run: evaluated one member at a time."""
    return [f"{cfg['results_dir']}/{d}/t{t}/metrics_{m}.json"
            for d, entry in cfg["datasets"].items() for t in runs for m in entry.get("pool", [])]


def dataset_format(dataset):
    entry = CFG["datasets"][dataset]
    return "h5ad" if "synthetic" in entry else entry.get("format", "auto")


def label_key(dataset):
    """The dataset's label column ('' = unlabelled); falls back to evaluate.label_key."""
    return CFG["datasets"][dataset].get("label_key", CFG["evaluate"]["label_key"])


def labelled(dataset):
    return bool(label_key(dataset))


def temperature_label(t):
    """Directory-safe label of a temperature: 0.05 -> '0.05'."""
    return format(float(t), "g")


def run_names(cfg):
    """One training run per temperature, or a single 'learn' run with a learnable temperature."""
    if cfg["train"]["learnable_temperature"]:
        return ["learn"]
    names = []
    for t in cfg["train"]["temperatures"]:
        if temperature_label(t) not in names:
            names.append(temperature_label(t))
    return names


class _FlowDumper(yaml.SafeDumper):
    """Safe YAML whose strings (keys too) are double-quoted: one line, JSON-like, never read as another type."""


_FlowDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"'))


def _check_finite(value):
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        raise WorkflowError(f"config value {value} cannot be passed to the CLI")
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
        _check_finite(item)


def yaml_value(value):
    """Serialise a config value as one line of flow YAML that PyYAML reads back identically (floats keep a dot)."""
    _check_finite(value)
    try:
        text = yaml.dump(value, Dumper=_FlowDumper, default_flow_style=True, width=math.inf, allow_unicode=True,
                         sort_keys=False)
    except yaml.YAMLError:
        raise WorkflowError(f"config value of type {type(value).__name__} cannot be passed to the CLI") from None
    return text.removesuffix("\n").removesuffix("\n...")  # a plain top-level scalar ends with "..."


def set_opts(*sections, **overrides):
    """`--set section={...}` for whole config sections, then `--set dotted.key=value` overrides.

    Used as rule params, so a change in any of these values reruns the rule (--rerun-triggers params)
    and, through its newer outputs, everything downstream of it and nothing else.
    """
    items = [f"{s}={yaml_value(CFG[s])}" for s in sections]
    items += [f"{k.replace('__', '.')}={yaml_value(v)}" for k, v in overrides.items()]
    return " ".join(f"--set {shlex.quote(item)}" for item in items)


def train_opts(dataset, temp):
    """`--set` options of one training run. `train.temperatures` (the sweep) is left out so that adding a
    temperature trains only the new run; a sweep run fixes its own temperature. The split is stratified on the
    dataset's label column unless the config sets split.stratify itself; a pooled dataset draws each batch within
    one member dataset (train.batch_key: dataset) unless the config sets train.batch_key itself."""
    section = {k: v for k, v in CFG["train"].items() if k != "temperatures"}
    if temp != "learn":
        section.update(temperature=float(temp), learnable_temperature=False)
    if pool_members(dataset) and "batch_key" not in (config.get("train") or {}):
        section["batch_key"] = DATASET_COLUMN  # each batch within one member dataset (and its antibody panel)
    split = dict(CFG["split"])
    if "stratify" not in (config.get("split") or {}):
        split["stratify"] = label_key(dataset)
    items = [f"split={yaml_value(split)}"] + [f"{s}={yaml_value(CFG[s])}" for s in ("preprocess", "model")]
    items.append(f"train={yaml_value(section)}")
    return " ".join(f"--set {shlex.quote(item)}" for item in items)


def evaluate_opts(dataset):
    """`--set` options of `omicsclip evaluate` on ``dataset`` (a pooled one: on each member in turn)."""
    return set_opts(
        "evaluate",
        evaluate__label_key=label_key(dataset),
        query__impute_k=CFG["query"]["impute_k"],
        query__temperature=CFG["query"]["temperature"],
        query__transfer_from=CFG["query"]["transfer_from"],
    )


def synth_opts(dataset):
    spec = CFG["datasets"][dataset]["synthetic"]
    flags = {"cells": "--cells", "genes": "--genes", "proteins": "--proteins", "types": "--types",
             "batches": "--batches", "seed": "--seed"}
    return " ".join(f"{flags[k]} {int(v)}" for k, v in spec.items())


def input_mb(paths):
    """Total size in MB of files/folders (0 while they do not exist yet, e.g. in a dry run)."""
    total = 0
    for p in map(Path, paths):
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total / 1e6


def mem_mb(base, per_input_mb):
    """Memory request: base + a multiple of the input size, doubled on each retry."""
    def _mem(wildcards, input, attempt):
        return int((base + per_input_mb * input_mb(input)) * 2 ** (attempt - 1))
    return _mem


def train_gpus(cfg):
    """GPUs per training job: 1 when train.device asks for CUDA (profiles may set more via set-resources)."""
    return 1 if cfg["train"]["device"].startswith("cuda") else 0


def train_launcher(gpus):
    """How a training job starts `omicsclip`: directly for 0 or 1 GPU, or as one torchrun process per GPU.

    The GPU count is the job's `gpu` resource (a profile's set-resources, e.g. configs/profiles/slurm-atlas), so
    the processes started always match the GPUs the scheduler granted. torchrun --standalone runs them on the
    job's one node (a local rendezvous); `--no-python` starts the installed `omicsclip` entry point. Under the
    SLURM executor the whole job already runs inside `srun -n1 --gpus=<gpu>` (snakemake-executor-plugin-slurm's
    job step), so the command has no srun of its own: a nested srun would ask for a second step on GPUs the
    first one holds.
    """
    gpus = int(gpus or 0)
    if gpus <= 1:
        return "omicsclip"
    return f"torchrun --standalone --nproc_per_node={gpus} --no-python omicsclip"


def report_config_opts(dataset):
    """The run's full config for the report's provenance section, restricted to this dataset (and, for a pooled
    one, the datasets it pools)."""
    sections = [k for k in CFG if k not in ("datasets", "results_dir")]
    entries = {d: CFG["datasets"][d] for d in [dataset, *pool_members(dataset)]}
    return set_opts(*sections) + " " + " ".join(
        f"--set {shlex.quote(item)}"
        for item in (f"results_dir={yaml_value(CFG['results_dir'])}", f"datasets={yaml_value(entries)}")
    )


def report_inputs(wildcards):
    """Inputs of the report rule: fewlabel curves and the head only for labelled datasets."""
    d = f"{CFG['results_dir']}/{wildcards.dataset}"
    inputs = {
        "store": f"{d}/store.zarr",
        "inspect": f"{d}/inspect.json",
        "selection": f"{d}/best/selection.json",
        "emb": f"{d}/best/embeddings.zarr",
        "query": f"{d}/best/query",
        "metrics": [f"{d}/t{t}/metrics.json" for t in RUNS],
        "models": [f"{d}/t{t}/model" for t in RUNS],
    }
    if labelled(wildcards.dataset):
        inputs["fewlabel"] = f"{d}/best/fewlabel.json"
        inputs["head"] = f"{d}/best/head"
    return inputs


CFG = merged_config(config)
check_inputs(CFG)
DATASETS = list(CFG["datasets"])
POOLED = [d for d in DATASETS if "pool" in CFG["datasets"][d]]
RUNS = run_names(CFG)
MEMBER_METRICS = member_metrics(CFG, RUNS)
