"""Summaries of a paired store: sizes, sparsity, QC numbers, provenance (for ``omicsclip inspect``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.io.jsonfile import dumps_json, jsonable
from omicsclip.io.panels import DATASET_COLUMN, GENE_PANELS_KEY, panels_of
from omicsclip.io.store import store_info

_MAX_LEVELS = 30


def _obs_summary(obs: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in obs.columns:
        s = obs[col]
        if pd.api.types.is_numeric_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype):
            v = s.to_numpy(dtype=float)
            out[str(col)] = {"min": float(np.nanmin(v)), "median": float(np.nanmedian(v)),
                             "max": float(np.nanmax(v))} if len(v) else {}
        else:
            counts = s.astype(str).value_counts()
            out[str(col)] = ({str(k): int(n) for k, n in counts.items()} if len(counts) <= _MAX_LEVELS
                             else {"n_levels": int(len(counts))})
    return out


def _datasets(info: dict[str, Any]) -> dict[str, Any]:
    """Per dataset of a pooled store: its cells, how many of the store's genes it measured, its panel."""
    uns = info["uns"] or {}
    panels, gene_panels = panels_of(uns), panels_of(uns, GENE_PANELS_KEY)
    if panels is None and gene_panels is None:
        return {}
    proteins = [str(x) for x in info["proteins"].index]
    counts = info["obs"][DATASET_COLUMN].astype(str).value_counts() if DATASET_COLUMN in info["obs"] else {}
    out = {}
    for name in sorted(panels or gene_panels):
        panel = set(proteins if panels is None else panels.get(name, []))
        out[name] = {"n_cells": int(counts.get(name, 0)),
                     "n_genes": len(info["genes"]) if gene_panels is None else len(gene_panels.get(name, [])),
                     "n_proteins": len(panel), "proteins_not_measured": [x for x in proteins if x not in panel]}
    return out


def inspect_store(path: str | Path) -> dict[str, Any]:
    """Cells, genes, proteins, sparsity, obs columns, QC and provenance of a store, as plain values.

    A pooled store (``omicsclip pool``) also gets ``datasets``: per dataset its cells, genes and antibody panel.
    """
    info = store_info(path)
    n, g, p = len(info["obs"]), len(info["genes"]), len(info["proteins"])
    uns = info["uns"] or {}
    return {
        "path": str(Path(path)),
        "n_cells": n,
        "n_genes": g,
        "n_proteins": p,
        "nnz_rna": info["nnz_rna"],
        "nnz_prot": info["nnz_prot"],
        "sparsity_rna": 1 - info["nnz_rna"] / (n * g) if n and g else 0.0,
        "sparsity_prot": 1 - info["nnz_prot"] / (n * p) if n and p else 0.0,
        "proteins": [str(x) for x in info["proteins"].index],
        "genes_head": [str(x) for x in info["genes"].index[:10]],
        "datasets": _datasets(info),
        "obs": _obs_summary(info["obs"]),
        "qc": jsonable(uns.get("qc", {})),
        "provenance": jsonable(uns.get("provenance", {})),
    }


def _fmt(v: Any) -> str:
    if v is None:  # also a non-finite number (strict JSON)
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) if v else "-"
    return str(v)


def format_summary(d: dict[str, Any]) -> str:
    """Human-readable text for :func:`inspect_store` output."""
    lines = [
        f"store      {d['path']}",
        f"cells      {d['n_cells']:,}",
        f"genes      {d['n_genes']:,}   (sparsity {d['sparsity_rna']:.1%}, {d['nnz_rna']:,} non-zeros)",
        f"proteins   {d['n_proteins']:,}   (sparsity {d['sparsity_prot']:.1%}): {', '.join(d['proteins'][:20])}"
        + (" ..." if d["n_proteins"] > 20 else ""),
    ]
    if d.get("datasets"):
        lines.append(f"datasets   {len(d['datasets'])} pooled: each measured its own genes and panel (outside "
                     "them the stored 0 is unmeasured)")
        for name, ds in d["datasets"].items():
            lacks = ds["proteins_not_measured"]
            lines.append(f"  {name:24s} {ds['n_cells']:>9,} cells  {ds['n_genes']:>7,} genes  {ds['n_proteins']:>4,} "
                         f"proteins" + (f" (not: {', '.join(lacks[:8])}{' ...' if len(lacks) > 8 else ''})"
                                        if lacks else ""))
    if d["obs"]:
        lines.append("obs")
        for col, s in d["obs"].items():
            if set(s) == {"min", "median", "max"}:
                lines.append(f"  {col:24s} min {_fmt(s['min'])}  median {_fmt(s['median'])}  max {_fmt(s['max'])}")
            else:
                shown = ", ".join(f"{k} {v}" for k, v in list(s.items())[:12])
                lines.append(f"  {col:24s} {shown}{' ...' if len(s) > 12 else ''}")
    if d["qc"]:
        lines.append("qc")
        lines += [f"  {k:32s} {_fmt(v)}" for k, v in sorted(d["qc"].items())]
    prov = d["provenance"]
    if prov:
        lines.append("provenance")
        for k, v in prov.items():
            if k == "inputs" and isinstance(v, dict):
                for name, inp in v.items():
                    if "object" in inp:  # data given in memory (omicsclip.io.ingest.object_inputs): no file
                        lines.append(f"  {name:32s} in-memory {inp['object']} {_fmt(inp.get('n_obs'))} x "
                                     f"{_fmt(inp.get('n_vars'))}, obs names sha256 "
                                     f"{str(inp.get('obs_names_sha256'))[:16]}...")
                        continue
                    lines.append(f"  {name:32s} {inp.get('path')} sha256 {str(inp.get('sha256'))[:16]}... "
                                 f"({_fmt(inp.get('bytes'))} bytes)")
            elif k == "options" and isinstance(v, dict):
                lines.append(f"  {'options':32s} {dumps_json(v, compact=True)}")
            else:
                lines.append(f"  {k:32s} {_fmt(v)}")
    return "\n".join(lines)
