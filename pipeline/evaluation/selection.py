"""Run outputs of a temperature sweep, and picking the best run on VALIDATION retrieval (never on the test cells).

The one place that reads a run folder (``t<temperature>/`` with ``metrics.json`` and ``model/``): its label and
temperature, the train log, the validation metrics. ``omicsclip select`` and the report both use it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import read_json, read_json_object, write_json

log = logging.getLogger(__name__)

#: validation metrics that can drive the selection, and whether larger is better
SELECTION_METRICS: dict[str, bool] = {
    "recall_at_1": True,
    "recall_at_10": True,
    "recall_at_50": True,
    "match_score": True,
    "celltype_match": True,
    "foscttm": False,
}
#: compared in this order after the chosen metric when runs tie
_TIE_BREAKERS = ("foscttm", "recall_at_1", "recall_at_50")


# ----------------------------------------------------------------------------------------------- run outputs


def run_label(run_dir: str | Path) -> str:
    """Label of a run from its folder name: ``results/d/t0.05`` -> ``"0.05"``.

    Parameters
    ----------
    run_dir
        The run folder (holds ``metrics.json`` and ``model/``).

    Returns
    -------
    str
        The folder name without its leading ``t`` (the whole name when it does not start with ``t``).
    """
    name = Path(run_dir).name
    return name[1:] if name.startswith("t") and len(name) > 1 else name


def read_train_log(path: str | Path) -> list[dict[str, Any]]:
    """Read the records of a ``train_log.jsonl`` (one JSON object per line); blank lines are skipped.

    Parameters
    ----------
    path
        The log file.

    Returns
    -------
    list of dict
        One record per non-blank line; :class:`InputError` naming the line when one is not a JSON object.
    """
    path = Path(path)
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for i, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{path}: line {i} is not valid JSON") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}: line {i} is not a JSON object")
            out.append(rec)
    return out


def run_temperature(label: str, records: list[dict[str, Any]]) -> float | None:
    """Temperature of a run: its label when that is a number, else the last one logged (learnable temperature).

    Parameters
    ----------
    label
        The run label (:func:`run_label`).
    records
        Its train log records (:func:`read_train_log`).

    Returns
    -------
    float or None
        ``None`` when neither the label nor the log gives a temperature.
    """
    try:
        return float(label)
    except ValueError:
        temps = [r["temperature"] for r in records
                 if isinstance(r.get("temperature"), int | float) and not isinstance(r.get("temperature"), bool)]
        return float(temps[-1]) if temps else None


def parse_validation(metrics: Mapping[str, Any]) -> dict[str, float] | None:
    """Parse the ``"validation"`` block of an evaluate ``metrics.json`` into ``{metric: value}``.

    Parameters
    ----------
    metrics
        The parsed ``metrics.json``. Plain keys (``recall_at_10``) or ``val_``-prefixed ones, flat or under
        ``"omicsclip"`` (per-method layout); anything that is not a finite number is dropped.

    Returns
    -------
    dict or None
        ``None`` when there is no (or an empty) validation block.
    """
    block = metrics.get("validation")
    if not isinstance(block, dict) or not block:
        return None
    if isinstance(block.get("omicsclip"), dict):  # per-method layout
        block = block["omicsclip"]
    out: dict[str, float] = {}
    for key, value in block.items():
        name = key[4:] if key.startswith("val_") else key
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def validation_metrics(metrics_path: str | Path) -> dict[str, float]:
    """Read the validation metrics of an evaluate ``metrics.json`` (see :func:`parse_validation`).

    Parameters
    ----------
    metrics_path
        The ``metrics.json``; :class:`InputError` when it or its validation block is missing.

    Returns
    -------
    dict
        ``{metric: value}``, counts such as ``n_val_cells`` included.
    """
    path = Path(metrics_path)
    data = read_json(path)
    values = parse_validation(data) if isinstance(data, dict) else None
    if values is None:
        raise InputError(f"{path}: no 'validation' metrics; selection needs validation retrieval, not test cells")
    return values


@dataclass
class RunData:
    """The outputs of one training run, as the report and the selection read them.

    Attributes
    ----------
    label
        Run label (:func:`run_label`).
    temperature
        Softmax temperature (:func:`run_temperature`).
    log
        ``model/train_log.jsonl`` records (empty when absent).
    metrics
        ``metrics.json`` (empty when absent).
    model_meta
        ``model/model.json`` (empty when absent).
    """

    label: str
    temperature: float | None
    log: list[dict[str, Any]]
    metrics: dict[str, Any]
    model_meta: dict[str, Any]

    @property
    def validation(self) -> dict[str, float]:
        """Validation metrics (:func:`parse_validation`; empty when there are none)."""
        return parse_validation(self.metrics) or {}


def load_run(run_dir: str | Path) -> RunData:
    """Read the train log, metrics and model metadata of one run folder.

    Parameters
    ----------
    run_dir
        ``t<temperature>/`` with ``metrics.json`` and ``model/`` (``train_log.jsonl``, ``model.json``);
        :class:`InputError` when it has neither a train log nor metrics.

    Returns
    -------
    RunData
        What the run folder holds.
    """
    run_dir = Path(run_dir)
    label = run_label(run_dir)
    log_path = run_dir / "model" / "train_log.jsonl"
    records = read_train_log(log_path) if log_path.exists() else []
    metrics = read_json_object(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    methods = metrics.get("methods", {})
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise InputError(f"{run_dir / 'metrics.json'}: 'methods' must map each method to its metrics")
    meta = read_json_object(run_dir / "model" / "model.json") if (run_dir / "model" / "model.json").exists() else {}
    if not records and not metrics:
        raise InputError(f"{run_dir}: neither model/train_log.jsonl nor metrics.json found")
    return RunData(label, run_temperature(label, records), records, metrics, meta)


# ----------------------------------------------------------------------------------------------- selection


def _sort_key(values: dict[str, float], metric: str) -> tuple[float, ...]:
    key = []
    for name in (metric, *[m for m in _TIE_BREAKERS if m != metric]):
        v = values.get(name, math.nan)
        if math.isnan(v):
            key.append(math.inf)
        else:
            key.append(-v if SELECTION_METRICS.get(name, True) else v)
    return tuple(key)


def select_best(
    metrics_paths: list[str | Path],
    *,
    metric: str = "recall_at_10",
    models: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Rank runs by a validation metric (ties broken by FOSCTTM, then recall@1/@50).

    Parameters
    ----------
    metrics_paths
        One evaluate ``metrics.json`` per run (the folder name ``t<temperature>`` labels the run).
    metric
        Validation metric to select on; see :data:`SELECTION_METRICS`.
    models
        Model folders in the same order (defaults to ``model/`` next to each metrics file).

    Returns
    -------
    dict
        ``{"metric", "higher_is_better", "source": "validation", "selected", "selected_model", "temperature",
        "runs": [{"run", "temperature", "metrics", "model", "validation", "rank"}]}``.
    """
    if metric not in SELECTION_METRICS:
        raise InputError(f"--metric {metric}: choose one of {', '.join(SELECTION_METRICS)}")
    if not metrics_paths:
        raise InputError("select: no metrics.json given")
    paths = [Path(p) for p in metrics_paths]
    model_dirs = [Path(m) for m in models] if models else [p.parent / "model" for p in paths]
    if len(model_dirs) != len(paths):
        raise InputError(f"select: {len(paths)} metrics files but {len(model_dirs)} --model folders")
    runs = []
    for path, model in zip(paths, model_dirs, strict=True):
        values = validation_metrics(path)
        if metric not in values:
            raise InputError(f"{path}: validation has no '{metric}' (has: {', '.join(sorted(values)) or 'nothing'})")
        label = run_label(path.resolve().parent)
        temperature = run_temperature(label, [])
        if temperature is None and (model / "train_log.jsonl").exists():  # learnable temperature: the last logged
            temperature = run_temperature(label, read_train_log(model / "train_log.jsonl"))
        runs.append({"run": label, "temperature": temperature, "metrics": str(path),
                     "model": str(model), "validation": values})
    order = sorted(range(len(runs)), key=lambda i: _sort_key(runs[i]["validation"], metric))
    for rank, i in enumerate(order, start=1):
        runs[i]["rank"] = rank
    best = runs[order[0]]
    log.info("selected run %s: validation %s = %.4f", best["run"], metric, best["validation"][metric])
    return {
        "metric": metric,
        "higher_is_better": SELECTION_METRICS[metric],
        "source": "validation",
        "selected": best["run"],
        "selected_model": best["model"],
        "temperature": best["temperature"],
        "runs": runs,
    }


def write_selection(
    selection: dict[str, Any],
    out: str | Path,
    *,
    copy_model_to: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the selection JSON and optionally copy the selected model (without checkpoints) next to it.

    Parameters
    ----------
    selection
        :func:`select_best` output.
    out
        The ``selection.json`` to write (atomically).
    copy_model_to
        Folder that receives a copy of the selected model folder, ``checkpoints/`` left out.
    overwrite
        Replace existing outputs.

    Returns
    -------
    Path
        ``out``.
    """
    if copy_model_to is not None:
        src = Path(selection["selected_model"])
        if not (src / "model.json").exists():
            raise InputError(f"{src}: not a model folder (no model.json)")
        with atomic_path(copy_model_to, overwrite=overwrite) as tmp:
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints", ".*"))
    with atomic_path(out, overwrite=overwrite) as tmp:
        write_json(tmp, selection)
    return Path(out)
