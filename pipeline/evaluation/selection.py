"""Pick the best training run of a temperature sweep on VALIDATION retrieval (never on the test cells)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import read_json

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


def run_label(metrics_path: str | Path) -> str:
    """Label of a run from its folder: ``results/d/t0.05/metrics.json`` -> ``"0.05"``."""
    name = Path(metrics_path).resolve().parent.name
    return name[1:] if name.startswith("t") and len(name) > 1 else name


def validation_metrics(metrics_path: str | Path) -> dict[str, float]:
    """The ``"validation"`` block of an evaluate ``metrics.json`` as ``{metric: value}``.

    Accepts plain keys (``recall_at_10``) or ``val_``-prefixed ones; anything that is not a finite number is
    dropped. Raises :class:`InputError` when the file or the block is missing.
    """
    path = Path(metrics_path)
    data = read_json(path)
    block = data.get("validation") if isinstance(data, dict) else None
    if not isinstance(block, dict) or not block:
        raise InputError(f"{path}: no 'validation' metrics; selection needs validation retrieval, not test cells")
    if isinstance(block.get("omicsclip"), dict):  # per-method layout
        block = block["omicsclip"]
    out: dict[str, float] = {}
    for key, value in block.items():
        name = key[4:] if key.startswith("val_") else key
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


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
        label = run_label(path)
        try:
            temperature: float | None = float(label)
        except ValueError:
            temperature = _learned_temperature(model)
        runs.append({"run": label, "temperature": temperature, "metrics": str(path), "model": str(model),
                     "validation": values})
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


def _learned_temperature(model_dir: Path) -> float | None:
    """Last logged temperature of a learnable-temperature run (None when not logged)."""
    log_path = model_dir / "train_log.jsonl"
    if not log_path.exists():
        return None
    last = None
    for line in log_path.read_text().splitlines():
        if line.strip():
            try:
                last = json.loads(line).get("temperature", last)
            except json.JSONDecodeError:
                continue
    return float(last) if isinstance(last, int | float) else None


def write_selection(
    selection: dict[str, Any],
    out: str | Path,
    *,
    copy_model_to: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the selection JSON and optionally copy the selected model (without checkpoints) next to it."""
    if copy_model_to is not None:
        src = Path(selection["selected_model"])
        if not (src / "model.json").exists():
            raise InputError(f"{src}: not a model folder (no model.json)")
        with atomic_path(copy_model_to, overwrite=overwrite) as tmp:
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints", ".*"))
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(selection, indent=2) + "\n")
    return Path(out)
