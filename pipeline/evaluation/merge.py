"""One metrics file for a reference pooled from several datasets, from each member's own evaluation.

``omicsclip evaluate POOLED --dataset NAME`` scores one member dataset on its own held-out cells and panel. The
workflow's run selection and report want one ``metrics.json`` per run; :func:`merge_member_metrics` writes it:
every metric is the mean over the members (each dataset counts once, whatever its size, so a small dataset is not
drowned by a large one), cell counts are summed, per-protein Pearson is the mean over the members that measured
the protein, and each member's own metrics are kept whole under ``members``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omicsclip.errors import InputError

COUNTS = ("n_test_cells", "n_train_cells", "n_val_cells")


def _mean(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(nums) / len(nums) if nums else None


def _merge_flat(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Key by key: counts summed, numbers averaged over the parts that have them, the rest from the first part."""
    keys = list(dict.fromkeys(k for p in parts for k in p))
    out: dict[str, Any] = {}
    for k in keys:
        values = [p.get(k) for p in parts if k in p]
        if k in COUNTS:
            out[k] = int(sum(int(v) for v in values if v is not None))
        elif all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            out[k] = _mean(values)
        else:
            out[k] = values[0]
    return out


def merge_member_metrics(members: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Return the pooled run's metrics from ``{member name: its metrics.json content}`` (module docstring)."""
    if not members:
        raise InputError("merge metrics: no member metrics given")
    names = list(members)
    parts = [members[n] for n in names]
    fps = {str(p.get("model_fingerprint")) for p in parts}
    if len(fps) > 1:
        raise InputError(f"merge metrics: the members were evaluated with different models ({', '.join(sorted(fps))})")
    out = {k: v for k, v in parts[0].items() if k not in ("methods", "validation", "protein_pearson_per_protein")}
    for k in COUNTS:
        if k in out:
            out[k] = int(sum(int(p.get(k) or 0) for p in parts))
    methods = list(dict.fromkeys(m for p in parts for m in p.get("methods", {})))
    out["methods"] = {m: _merge_flat([p["methods"][m] for p in parts if m in p.get("methods", {})]) for m in methods}
    out["validation"] = _merge_flat([p.get("validation") or {} for p in parts])
    per_protein: dict[str, dict[str, float | None]] = {}
    for p in parts:
        for method, table in (p.get("protein_pearson_per_protein") or {}).items():
            per_protein.setdefault(method, {})
            for protein, r in table.items():
                per_protein[method].setdefault(protein, [])
                per_protein[method][protein].append(r)
    out["protein_pearson_per_protein"] = {m: {q: _mean(rs) for q, rs in t.items()} for m, t in per_protein.items()}
    out["dataset"] = None
    out["members"] = {n: dict(members[n]) for n in names}
    out["merged"] = "mean over the member datasets (each counts once); counts summed"
    return out


def merge_member_files(paths: Mapping[str, str | Path], out: str | Path) -> Path:
    """Read each member's metrics file, write the merged metrics to ``out`` (atomically); return ``out``."""
    from omicsclip.io.jsonfile import write_json

    members = {}
    for name, path in paths.items():
        try:
            members[str(name)] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read member metrics ({type(exc).__name__})") from None
    write_json(out, merge_member_metrics(members))
    return Path(out)
