"""The per-dataset ``report.html``: one self-contained file (figures embedded as base64 PNG, inline CSS).

Sections: dataset and QC summary, training and validation curves of every run, the temperature sweep, retrieval
metrics against the baselines, UMAPs of the embeddings, imputed against measured protein, few-label learning
curves and provenance. Every input except the run folders is optional; a missing one leaves a short note in
its section instead of a figure.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import read_json_object

log = logging.getLogger(__name__)

METHOD_ORDER = ("omicsclip", "cca", "ridge", "pca")
TABLE_METRICS = ("recall_at_1", "recall_at_10", "recall_at_50", "foscttm", "match_score", "celltype_match",
                 "fewlabel_accuracy", "protein_pearson", "protein_rmse")
BAR_METRICS = ("recall_at_1", "recall_at_10", "recall_at_50", "foscttm", "match_score", "celltype_match",
               "fewlabel_accuracy", "protein_pearson")
VERSION_PACKAGES = ("omicsclip", "torch", "numpy", "scipy", "pandas", "anndata", "mudata", "scanpy", "zarr",
                    "faiss-cpu", "scikit-learn", "snakemake", "matplotlib")
EMBEDDING_KEYS = {"joint": "X_omicsclip_joint", "rna": "X_omicsclip_rna", "prot": "X_omicsclip_prot"}


@dataclass
class ReportInputs:
    """Everything the report reads; only ``runs`` is required.

    Parameters
    ----------
    dataset
        Dataset name (report title).
    runs
        Run folders, each with ``model/`` (``train_log.jsonl``, ``model.json``) and ``metrics.json``;
        the folder name ``t<temperature>`` labels the run.
    inspect
        ``omicsclip inspect --json`` output of the paired store.
    selection
        ``omicsclip select`` output (which run was selected on validation retrieval).
    embeddings
        ``omicsclip embed`` output (AnnData zarr) of the selected model.
    query
        ``omicsclip query`` output folder of held-out cells queried with RNA only.
    store
        The paired store (measured protein of the query cells).
    fewlabel
        ``omicsclip fewlabel`` output.
    config
        The run's full config (provenance).
    label_key
        obs column with cell types.
    """

    dataset: str
    runs: list[Path]
    inspect: Path | None = None
    selection: Path | None = None
    embeddings: Path | None = None
    query: Path | None = None
    store: Path | None = None
    fewlabel: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    label_key: str = "cell_type"


# ----------------------------------------------------------------------------------------------- loading


def read_train_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``train_log.jsonl`` (one JSON object per line); blank lines are skipped."""
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


def run_label(run_dir: str | Path) -> str:
    """``results/d/t0.05`` -> ``"0.05"``."""
    name = Path(run_dir).name
    return name[1:] if name.startswith("t") and len(name) > 1 else name


@dataclass
class RunData:
    label: str
    temperature: float | None
    log: list[dict[str, Any]]
    metrics: dict[str, Any]
    model_meta: dict[str, Any]


def load_run(run_dir: str | Path) -> RunData:
    """Train log, metrics and model metadata of one run folder."""
    run_dir = Path(run_dir)
    label = run_label(run_dir)
    log_path = run_dir / "model" / "train_log.jsonl"
    records = read_train_log(log_path) if log_path.exists() else []
    metrics = read_json_object(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    methods = metrics.get("methods", {})
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise InputError(f"{run_dir / 'metrics.json'}: 'methods' must map each method to its metrics")
    meta = read_json_object(run_dir / "model" / "model.json") if (run_dir / "model" / "model.json").exists() else {}
    try:
        temperature: float | None = float(label)
    except ValueError:
        temps = [r["temperature"] for r in records if isinstance(r.get("temperature"), int | float)]
        temperature = float(temps[-1]) if temps else None
    if not records and not metrics:
        raise InputError(f"{run_dir}: neither model/train_log.jsonl nor metrics.json found")
    return RunData(label, temperature, records, metrics, meta)


def _validation(metrics: Mapping[str, Any]) -> dict[str, float]:
    block = metrics.get("validation")
    block = block if isinstance(block, dict) else {}
    out = {}
    for k, v in block.items():
        k = k[4:] if k.startswith("val_") else k
        if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("n_"):
            out[k] = float(v)
    return out


def subsample(n: int, max_n: int, seed: int = 0) -> np.ndarray:
    """Sorted random subset of ``range(n)`` of size at most ``max_n``."""
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def _open_embeddings(path: str | Path):
    import zarr

    path = Path(path)
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any unreadable store is one clear line
        raise InputError(f"{path}: cannot read embeddings ({type(exc).__name__}: {exc})") from None


def read_embedding_obs(path: str | Path) -> pd.DataFrame:
    """The obs table of an ``omicsclip embed`` output, without loading the embeddings."""
    from anndata.io import read_elem

    return read_elem(_open_embeddings(path)["obs"])


def read_embeddings(path: str | Path, *, max_cells: int, seed: int = 0) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """The embedding matrices (``joint``/``rna``/``prot``) and obs of a random subset of at most ``max_cells``."""
    root = _open_embeddings(path)
    obs = read_embedding_obs(path)
    idx = subsample(len(obs), max_cells, seed)
    mats = {k: np.asarray(root[f"obsm/{key}"].get_orthogonal_selection((idx, slice(None))))
            for k, key in EMBEDDING_KEYS.items() if f"obsm/{key}" in root}
    if not mats:
        raise InputError(f"{path}: no obsm key of {', '.join(EMBEDDING_KEYS.values())}")
    return mats, obs.iloc[idx].copy()


def umap_coords(x: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.5, seed: int = 0) -> np.ndarray:
    """2-D UMAP (umap-learn) of the rows of ``x`` on exact cosine neighbours from FAISS.

    The neighbour search is FAISS rather than pynndescent so that only UMAP's layout is JIT-compiled, which
    keeps the report fast on a few CPU cores.
    """
    import faiss
    from umap.umap_ import find_ab_params, fuzzy_simplicial_set, simplicial_set_embedding

    x = np.ascontiguousarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = x.shape[0]
    if n < 4:
        raise InputError(f"UMAP needs at least 4 cells, got {n}")
    k = min(n_neighbors, n - 1)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, knn = index.search(x, k)
    dists = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims)).astype(np.float32)  # chord length: monotone in cosine
    rs = np.random.RandomState(seed)
    graph, _, _ = fuzzy_simplicial_set(x, k, rs, "euclidean", knn_indices=knn.astype(np.int64), knn_dists=dists)
    a, b = find_ab_params(1.0, min_dist)
    emb, _ = simplicial_set_embedding(
        data=x, graph=graph, n_components=2, initial_alpha=1.0, a=a, b=b, gamma=1.0, negative_sample_rate=5,
        n_epochs=None, init="spectral", random_state=rs, metric="euclidean", metric_kwds={}, densmap=False,
        densmap_kwds={}, output_dens=False,
    )
    return np.asarray(emb)


def imputation_arrays(query_dir: str | Path, store: str | Path | None, *, cells: Sequence[str] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Imputed protein of the query cells and the measured values on the same (CLR) scale.

    The query's ``imputed_protein.h5ad`` holds imputed values (``X``) and, when it has them, the measured ones
    (layer ``measured``); otherwise the measured raw counts are read from ``store`` and CLR-transformed on the
    imputed protein panel, as the reference protein was. ``cells`` restricts to those barcodes (e.g. the held-out
    test cells). Returns ``(imputed, measured, proteins, scale)``.
    """
    import anndata as ad

    path = Path(query_dir) / "imputed_protein.h5ad"
    if not path.exists():
        raise InputError(f"{path}: not found")
    imp = ad.read_h5ad(path)
    if cells is not None:
        imp = imp[imp.obs_names.astype(str).isin(pd.Index(cells).astype(str))]
        if imp.n_obs == 0:
            raise InputError(f"{path}: none of the held-out cells were queried")
    proteins = [str(p) for p in imp.var_names]
    imputed = _dense(imp.X)
    scale = str(imp.uns.get("normalisation", "clr")).upper()
    if "measured" in imp.layers:
        return imputed, _dense(imp.layers["measured"]), proteins, scale
    if store is None:
        raise InputError(f"{path}: no 'measured' layer and no store to read measured protein from")
    from omicsclip.io.store import read_store
    from omicsclip.model.preprocess import clr

    data = read_store(store)
    pos = pd.Index(data.obs.index.astype(str)).get_indexer(imp.obs_names.astype(str))
    cols = pd.Index(data.proteins.index.astype(str)).get_indexer(proteins)
    if (pos < 0).any() or (cols < 0).any():
        raise InputError(f"{path}: query cells or proteins are not in {store}")
    measured = clr(np.asarray(data.prot, dtype=np.float64)[pos][:, cols])
    return imputed, np.asarray(measured, dtype=np.float64), proteins, scale


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def fewlabel_curves(data: Any) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """``{score: {method: [(labels per class, mean, sd)]}}`` from a ``fewlabel.json``.

    Understands per-draw or aggregated records — any list of dicts with ``labels_per_class`` (or
    ``n_labels``), an optional ``method``/``fusion`` and numeric ``accuracy``/``macro_f1`` (``*_mean``/``*_std``)
    fields — found under ``curves``, ``results`` or ``records``, or nested ``{method: {n: {score: ...}}}``.
    """
    records = _fewlabel_records(data)
    if not records:
        raise InputError("fewlabel.json: no learning-curve records found")
    groups: dict[tuple[str, str, float], list[tuple[float, float | None]]] = {}
    for r in records:
        n = r.get("labels_per_class", r.get("n_labels"))
        if not isinstance(n, int | float):
            continue
        method = str(r.get("method", r.get("fusion", r.get("head", "omicsclip"))))
        for score in ("accuracy", "macro_f1", "balanced_accuracy"):
            v, sd = r.get(score, r.get(f"{score}_mean")), r.get(f"{score}_std", r.get(f"{score}_sd"))
            if isinstance(v, dict):
                v, sd = v.get("mean"), v.get("std", v.get("sd"))
            if isinstance(v, int | float) and math.isfinite(v):
                groups.setdefault((score, method, float(n)), []).append(
                    (float(v), float(sd) if isinstance(sd, int | float) else None))
    curves: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for (score, method, n), vals in sorted(groups.items()):
        means = np.array([v for v, _ in vals])
        if len(vals) == 1 and vals[0][1] is not None:
            sd = vals[0][1]
        else:
            sd = float(means.std(ddof=1)) if len(vals) > 1 else float("nan")
        curves.setdefault(score, {}).setdefault(method, []).append((n, float(means.mean()), sd))
    if not curves:
        raise InputError("fewlabel.json: records have no accuracy or macro_f1 values")
    return curves


def _fewlabel_records(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if not isinstance(data, dict):
        return []
    for key in ("records", "results", "curves", "learning_curves", "draws"):
        if key in data:
            found = _fewlabel_records(data[key])
            if found:
                return found
    out = []  # nested {method: {n: {score: value}}}
    for method, per_n in data.items():
        if isinstance(per_n, dict):
            for n, scores in per_n.items():
                try:
                    n_val = float(n)
                except (TypeError, ValueError):
                    continue
                if isinstance(scores, dict):
                    out.append({"method": method, "labels_per_class": n_val, **scores})
    return out


def package_versions(names: Iterable[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions (``"-"`` for packages that are not installed)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


# ----------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1d1d1f;margin:0;background:#f6f7f9;
line-height:1.45;font-size:15px}
main{max-width:1320px;margin:0 auto;padding:24px 32px 60px;background:#fff}
header{border-bottom:3px solid #1f77b4;margin-bottom:12px}
h1{margin:8px 0 4px;font-size:28px} h2{margin-top:36px;padding-top:8px;border-top:1px solid #e3e3e3;font-size:21px}
h3{font-size:16px;margin-bottom:6px}
.sub{color:#555;margin:0 0 12px}
nav{font-size:14px;margin:10px 0 4px} nav a{margin-right:14px;color:#1f77b4;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px}
th,td{border:1px solid #d9d9d9;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef3f8;text-align:center} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc} tr.sel td{background:#fff4d6;font-weight:600}
td.best{font-weight:700;color:#0b5394}
img{max-width:100%;height:auto;display:block;margin:8px 0 4px;border:1px solid #eee}
.note{color:#8a5300;background:#fff8e6;border-left:4px solid #f0ad4e;padding:6px 10px;margin:8px 0}
.cap{color:#555;font-size:13.5px;margin:2px 0 14px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #dde3ea;border-radius:6px;padding:8px 14px;min-width:150px;background:#f9fbfd}
.card b{display:block;font-size:21px;color:#0b5394} .card span{font-size:13px;color:#555}
pre{background:#f4f4f4;padding:10px;overflow:auto;font-size:12.5px;max-height:480px}
details summary{cursor:pointer;color:#1f77b4;margin:6px 0}
.cols{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.chips code{display:inline-block;background:#eef3f8;border-radius:4px;padding:2px 7px;margin:2px 4px 2px 0;
font-size:13px}
"""


def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(v: Any, digits: int = 3) -> str:
    """Numbers for tables: whole numbers with thousands separators, other floats with ``digits`` decimals."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v.is_integer() and 10 <= abs(v) < 1e15:  # counts; 0.0 and 1.0 stay scores
            return f"{int(v):,}"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        if abs(v) >= 1e3:
            return f"{v:,.1f}"
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return esc(v)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, row_class: Sequence[str] | None = None,
          cell_class: Mapping[tuple[int, int], str] | None = None) -> str:
    """An HTML table; cells are escaped/formatted with :func:`fmt`, numbers right-aligned."""
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = []
        for j, v in enumerate(row):
            classes = [c for c in ((cell_class or {}).get((i, j)),
                                   "num" if isinstance(v, int | float) and not isinstance(v, bool) else None) if c]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{fmt(v)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def kv_table(items: Sequence[tuple[str, Any]], *, columns: int = 2, header: tuple[str, str] = ("item", "value")
             ) -> str:
    """Key/value pairs laid out in ``columns`` side-by-side column pairs (shorter than one long table)."""
    n_rows = math.ceil(len(items) / columns)
    rows = []
    for r in range(n_rows):
        row: list[Any] = []
        for c in range(columns):
            k = c * n_rows + r
            row += list(items[k]) if k < len(items) else ["", ""]
        rows.append(row)
    return table(list(header) * columns, rows)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


class Figures:
    """Render matplotlib figures to embedded PNG ``<img>`` tags (and optionally to files for Snakemake)."""

    def __init__(self, out_dir: Path | None, dpi: int = 110) -> None:
        self.out_dir = out_dir
        self.dpi = dpi
        self.written: list[Path] = []

    def img(self, fig: Any, name: str, alt: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, facecolor="white")
        data = buf.getvalue()
        if self.out_dir is not None:
            p = self.out_dir / f"{name}.png"
            p.write_bytes(data)
            self.written.append(p)
        return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


# ----------------------------------------------------------------------------------------------- sections


def _section_dataset(info: dict[str, Any] | None, figs: Figures, label_key: str) -> str:
    from omicsclip.report import plots

    if info is None:
        return note("No store summary (omicsclip inspect --json) was given.")
    cards = [("cells", info.get("n_cells")), ("genes", info.get("n_genes")), ("proteins", info.get("n_proteins")),
             ("RNA sparsity", info.get("sparsity_rna")), ("protein sparsity", info.get("sparsity_prot"))]
    parts = ['<div class="cards">' + "".join(
        f"<div class='card'><b>{fmt(v, 3) if not isinstance(v, float) else f'{v:.1%}'}</b><span>{esc(k)}</span></div>"
        for k, v in cards if v is not None) + "</div>"]
    prots = info.get("proteins") or []
    if prots:
        parts.append(f"<p><b>Proteins:</b> {esc(', '.join(map(str, prots)))}</p>")
    obs = info.get("obs") or {}
    left = []
    if obs:
        rows = []
        for col, s in obs.items():
            if isinstance(s, dict) and set(s) == {"min", "median", "max"}:
                rows.append([col, f"min {fmt(s['min'])} · median {fmt(s['median'])} · max {fmt(s['max'])}"])
            elif isinstance(s, dict) and set(s) == {"n_levels"}:
                rows.append([col, f"{s['n_levels']:,} distinct values"])
            elif isinstance(s, dict):
                shown = ", ".join(f"{k} ({v:,})" for k, v in list(s.items())[:12])
                rows.append([col, shown + (" …" if len(s) > 12 else "")])
        left.append("<h3>Cell metadata</h3>" + table(["obs column", "summary"], rows))
    qc = info.get("qc") or {}
    if qc:
        items = [(k, v) for k, v in sorted(qc.items()) if not isinstance(v, dict | list)]
        left.append("<h3>QC at ingest</h3>" + kv_table(items, columns=2, header=("QC", "value")))
    right = ""
    counts = obs.get(label_key) if isinstance(obs.get(label_key), dict) else None
    if counts and "n_levels" not in counts and all(isinstance(v, int) for v in counts.values()):
        right = figs.img(plots.bar_counts(counts, f"cells per {label_key}"), "cell_types", "cells per type")
    parts.append(f"<div class='cols'><div>{''.join(left)}</div><div style='flex:1;min-width:380px'>{right}</div></div>")
    return "".join(parts)


def _section_training(runs: list[RunData], selected: str | None, figs: Figures) -> str:
    from omicsclip.report import plots

    logs = {r.label: r.log for r in runs if r.log}
    if not logs:
        return note("No train_log.jsonl found in the run folders.")
    img = figs.img(plots.training_curves(logs, selected), "training_curves", "training and validation curves")
    return img + ('<p class="cap">One line per training run (softmax temperature T); the selected run is drawn '
                  "thicker. Validation cells are held out from training and used for early stopping and "
                  "temperature selection; test cells are not used for either.</p>")


def _section_sweep(runs: list[RunData], selection: dict[str, Any] | None, figs: Figures) -> str:
    from omicsclip.report import plots

    metric = (selection or {}).get("metric", "recall_at_10")
    selected = (selection or {}).get("selected")
    rows, classes, plot_rows = [], [], []
    for r in sorted(runs, key=lambda r: (r.temperature is None, r.temperature or 0)):
        val = _validation(r.metrics)
        test = (r.metrics.get("methods") or {}).get("omicsclip", {})
        epochs = [x.get("epoch") for x in r.log if isinstance(x.get("epoch"), int | float)]
        rows.append([r.label, r.temperature, len(epochs) or None, val.get("recall_at_1"), val.get("recall_at_10"),
                     val.get("foscttm"), test.get("recall_at_10"), test.get("foscttm"),
                     "✔" if r.label == selected else ""])
        classes.append("sel" if r.label == selected else "")
        plot_rows.append({"temperature": r.temperature, "validation": val, "selected": r.label == selected})
    header = ["run", "temperature", "epochs", "val recall@1", "val recall@10", "val FOSCTTM", "test recall@10",
              "test FOSCTTM", "selected"]
    out = [table(header, rows, row_class=classes)]
    if selection:
        out.append(f"<p class='cap'>Selected on <b>validation {esc(metric)}</b> "
                   f"({'higher' if selection.get('higher_is_better', True) else 'lower'} is better; ties broken by "
                   "validation FOSCTTM). Test columns are shown for information only and played no part in the "
                   "choice.</p>")
    else:
        out.append(note("No selection.json: no run is marked as selected."))
    if sum(1 for p in plot_rows if p["temperature"] is not None and p["validation"]) >= 2:
        out.append(figs.img(plots.temperature_sweep(plot_rows, metric), "temperature_sweep", "temperature sweep"))
    return "".join(out)


def _section_metrics(best: RunData | None, figs: Figures) -> str:
    from omicsclip.report import plots

    if best is None or not best.metrics.get("methods"):
        return note("No metrics.json for the selected run.")
    methods = best.metrics["methods"]
    names = [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]
    keys = [k for k in TABLE_METRICS if any(isinstance(methods[m].get(k), int | float) for m in names)]
    if not keys:
        raise InputError(f"run {best.label}: metrics.json has no numeric metrics to show")
    rows, cell_class = [], {}
    for j, k in enumerate(keys, start=1):
        vals = [methods[m].get(k) for m in names]
        nums = [v for v in vals if isinstance(v, int | float)]
        if len(nums) > 1:
            target = min(nums) if k in ("foscttm", "protein_rmse") else max(nums)
            for i, v in enumerate(vals):
                if v == target:
                    cell_class[(i, j)] = "best"
    for m in names:
        rows.append([m] + [methods[m].get(k) for k in keys])
    header = ["method"] + [plots.METRIC_LABELS.get(k, k) for k in keys]
    n_test = best.metrics.get("n_test_cells")
    out = [table(header, rows, cell_class=cell_class),
           f"<p class='cap'>Held-out test cells (n = {fmt(n_test)}), never seen in training or model selection. "
           "Baselines (PCA, CCA, ridge RNA→protein) are fitted on the same training cells in the same run. "
           "Best value per metric in bold blue; '–' = not applicable to that method.</p>"]
    bar_methods = {m: methods[m] for m in names}
    out.append(figs.img(plots.metrics_bars(bar_methods, BAR_METRICS), "retrieval_vs_baselines",
                        "metrics against baselines"))
    per = best.metrics.get("protein_pearson_per_protein") or {}
    if per:
        prots = sorted({p for d in per.values() if isinstance(d, dict) for p in d})
        meths = [m for m in names if m in per] + [m for m in per if m not in names]
        out.append("<details><summary>Pearson r per protein (imputed from RNA, test cells)</summary>" + table(
            ["protein"] + meths, [[p] + [per[m].get(p) for m in meths] for p in prots]) + "</details>")
    return "".join(out)


def _section_umap(inputs: ReportInputs, figs: Figures, max_cells: int, seed: int) -> str:
    from omicsclip.report import plots

    if inputs.embeddings is None:
        return note("No embeddings were given.")
    t0 = time.perf_counter()
    mats, obs = read_embeddings(inputs.embeddings, max_cells=max_cells, seed=seed)
    labels = (obs[inputs.label_key].astype(str).to_numpy() if inputs.label_key in obs.columns
              else np.array(["(unlabelled)"] * len(obs)))
    panels = []
    if "joint" in mats:
        panels.append((f"joint embedding · {inputs.label_key}", umap_coords(mats["joint"], seed=seed), labels))
    if "rna" in mats and "prot" in mats:
        both = np.vstack([mats["rna"], mats["prot"]])
        xy = umap_coords(both, seed=seed)
        modality = np.array(["RNA"] * len(mats["rna"]) + ["protein"] * len(mats["prot"]))
        panels.append(("RNA + protein embeddings · modality", xy, modality))
        panels.append((f"RNA + protein embeddings · {inputs.label_key}", xy, np.concatenate([labels, labels])))
    log.info("report: UMAPs of %d cells in %.1f s", len(obs), time.perf_counter() - t0)
    img = figs.img(plots.umap_panels(panels), "umap", "UMAP of the embeddings")
    return img + (f"<p class='cap'>UMAP (cosine neighbours) of {len(obs):,} randomly chosen cells. Left: the "
                  "joint embedding (mean of the two modality embeddings). Middle and right: each cell's RNA and "
                  "protein embeddings placed in one map; well-aligned modalities mix within each cell type.</p>")


def _section_imputation(inputs: ReportInputs, figs: Figures, max_cells: int, seed: int) -> str:
    from omicsclip.report import plots

    if inputs.query is None:
        return note("No query results were given.")
    test_cells = _test_cells(inputs.embeddings)
    imputed, measured, proteins, space = imputation_arrays(inputs.query, inputs.store, cells=test_cells)
    idx = subsample(len(imputed), max_cells, seed)
    out = [figs.img(plots.imputation_scatter(imputed[idx], measured[idx], proteins, space=space), "imputation",
                    "imputed vs measured protein")]
    summary_path = Path(inputs.query) / "summary.json"
    summ = read_json_object(summary_path) if summary_path.exists() else {}
    who = "held-out test cells" if test_cells is not None else "query cells"
    out.append(f"<p class='cap'>{len(imputed):,} {who} queried with their RNA only against the index of "
               f"training cells; protein imputed from the neighbours' protein ({esc(space)} scale) and compared "
               "with the protein measured in those cells, which the query did not see. "
               + (f"Panels: the 6 best- and 6 worst-imputed of {len(proteins)} proteins. " if len(proteins) > 12
                  else "")
               + "Dashed line: y = x.</p>")
    flat = {k: v for k, v in summ.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    if flat:
        out.append("<details><summary>query summary.json</summary>"
                   + table(["key", "value"], [[k, v] for k, v in flat.items()]) + "</details>")
    return "".join(out)


def _test_cells(embeddings: Path | None) -> list[str] | None:
    """Barcodes of the held-out test cells from the embeddings' ``split`` column (None when unknown)."""
    if embeddings is None:
        return None
    try:
        obs = read_embedding_obs(embeddings)
    except InputError:  # the UMAP section reports unreadable embeddings
        return None
    if "split" not in obs.columns:
        return None
    return [str(c) for c in obs.index[obs["split"].astype(str) == "test"]]


def _section_fewlabel(path: Path | None, figs: Figures) -> str:
    from omicsclip.report import plots

    if path is None:
        return note("No few-label results (unlabelled dataset or step not run).")
    curves = fewlabel_curves(read_json_object(path))
    methods = {m for per in curves.values() for m in per}
    baselines = sorted(m for m in methods if m.startswith("logreg") or m in ("pca", "baseline"))
    out = [figs.img(plots.learning_curves(curves, baselines=baselines), "fewlabel", "few-label learning curves")]
    rows = []
    for score, per in curves.items():
        for method, pts in per.items():
            for n, m, sd in pts:
                rows.append([score, method, n, m, sd])
    out.append("<p class='cap'>Cell-type heads on the frozen embeddings, trained on n labelled training cells per "
               "class and scored on the held-out test cells; mean ± s.d. (bands) over random draws of the labelled "
               "cells. Solid lines: omicsclip heads (fusions of both modalities, or one modality); dashed black: "
               + (esc(", ".join(baselines)) if baselines else "no baseline") + ".</p>")
    out.append("<details><summary>table</summary>"
               + table(["score", "method", "labels per class", "mean", "s.d."], rows) + "</details>")
    return "".join(out)


def _section_provenance(inputs: ReportInputs, info: dict[str, Any] | None, runs: list[RunData],
                        selection: dict[str, Any] | None) -> str:
    import yaml

    out = ["<h3>Versions</h3><p class='chips'>" + "".join(
        f"<code>{esc(k)} {esc(v)}</code>" for k, v in package_versions().items()) + "</p>"]
    rows = []
    prov = (info or {}).get("provenance") or {}
    for name, inp in (prov.get("inputs") or {}).items():
        if isinstance(inp, dict):
            rows.append([f"input {name}", f"{inp.get('path', '')} · sha256 {inp.get('sha256', '')}"])
    for k, v in prov.items():
        if k not in ("inputs", "options") and not isinstance(v, dict | list):
            rows.append([f"store {k}", str(v)])
    for r in runs:
        for key in ("data_fingerprint", "model_fingerprint", "fingerprint"):
            if r.model_meta.get(key):
                rows.append([f"run {r.label} {key.replace('_', ' ')}", r.model_meta[key]])
    if selection:
        rows.append(["selected run", f"{selection.get('selected')} (validation {selection.get('metric')})"])
    rows.append(["report generated", time.strftime("%Y-%m-%d %H:%M:%S %Z")])
    rows.append(["host", platform.node()])
    out += ["<h3>Data and model fingerprints</h3>", table(["item", "value"], rows)]
    if inputs.config:
        text = yaml.safe_dump(inputs.config, sort_keys=False, default_flow_style=None, width=110)
        out.append(f"<details><summary>Full configuration (YAML)</summary><pre>{esc(text)}</pre></details>")
    return "".join(out)


_INSPECT_NUMBERS = ("n_cells", "n_genes", "n_proteins", "sparsity_rna", "sparsity_prot")


def _read_inspect(path: Path) -> dict[str, Any]:
    """``omicsclip inspect --json`` output, with the types the report reads checked (one-line InputError)."""
    info = read_json_object(path)

    def bad(key: str, want: str) -> InputError:
        return InputError(f"{path}: {key!r} must be {want} (is this `omicsclip inspect --json` output?)")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in _INSPECT_NUMBERS:
        v = info.get(key)
        if v is None:
            continue
        if key.startswith("n_") and not is_int(v):
            raise bad(key, "an integer")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad(key, "a number")
    for key, kind, name in (("proteins", list, "a list"), ("obs", dict, "an object"), ("qc", dict, "an object"),
                            ("provenance", dict, "an object")):
        if key in info and info[key] is not None and not isinstance(info[key], kind):
            raise bad(key, name)
    inputs = (info.get("provenance") or {}).get("inputs")
    if inputs is not None and not (isinstance(inputs, dict) and all(isinstance(v, dict) for v in inputs.values())):
        raise bad("provenance.inputs", "an object of objects")
    for col, summary in (info.get("obs") or {}).items():
        if not isinstance(summary, dict):
            raise bad(f"obs.{col}", "an object")
        if set(summary) == {"n_levels"}:
            if not is_int(summary["n_levels"]):
                raise bad(f"obs.{col}.n_levels", "an integer")
        elif set(summary) != {"min", "median", "max"} and not all(is_int(v) for v in summary.values()):
            raise bad(f"obs.{col}", "min/median/max, n_levels, or counts per value")
    return info


def _guard(title: str, fn, *args) -> str:
    """Render one section; a failure becomes a note so that the other sections still render."""
    try:
        return fn(*args)
    except InputError as exc:
        log.warning("report section %r: %s", title, exc)
        return note(f"{title}: {exc}")


def render_report(inputs: ReportInputs, *, figures_dir: Path | None = None, max_umap_cells: int = 3000,
                  max_scatter_cells: int = 4000, seed: int = 0) -> str:
    """Build the report HTML (figures also written to ``figures_dir`` when given)."""
    if not inputs.runs:
        raise InputError("report: at least one run folder (--run) is needed")
    runs = [load_run(r) for r in inputs.runs]
    selection = read_json_object(inputs.selection) if inputs.selection else None
    selected = (selection or {}).get("selected")
    if selected is None and len(runs) == 1:
        selected = runs[0].label
    best = next((r for r in runs if r.label == selected), None)
    info = _read_inspect(inputs.inspect) if inputs.inspect else None
    figs = Figures(figures_dir)

    sections = [
        ("dataset", "Dataset and QC", _guard("dataset", _section_dataset, info, figs, inputs.label_key)),
        ("training", "Training and validation curves", _guard("training", _section_training, runs, selected, figs)),
        ("sweep", "Temperature sweep", _guard("sweep", _section_sweep, runs, selection, figs)),
        ("metrics", "Retrieval and imputation vs baselines", _guard("metrics", _section_metrics, best, figs)),
        ("umap", "Embeddings (UMAP)", _guard("umap", _section_umap, inputs, figs, max_umap_cells, seed)),
        ("imputation", "Imputed vs measured protein", _guard("imputation", _section_imputation, inputs, figs,
                                                               max_scatter_cells, seed)),
        ("fewlabel", "Few-label cell-type learning curves", _guard("fewlabel", _section_fewlabel, inputs.fewlabel,
                                                                   figs)),
        ("provenance", "Run provenance", _guard("provenance", _section_provenance, inputs, info, runs, selection)),
    ]
    om = (best.metrics.get("methods") or {}).get("omicsclip", {}) if best else {}
    headline = []
    if selected is not None:
        headline.append(f"selected temperature <b>{esc(selected)}</b>")
    for k, lab in (("recall_at_10", "test recall@10"), ("foscttm", "test FOSCTTM"),
                   ("protein_pearson", "protein r")):
        if isinstance(om.get(k), int | float):
            headline.append(f"{lab} <b>{om[k]:.3f}</b>")
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>omicsclip report · {esc(inputs.dataset)}</title><style>{_CSS}</style></head><body><main>"
        f"<header><h1>omicsclip report · {esc(inputs.dataset)}</h1>"
        f"<p class='sub'>{' · '.join(headline)}</p><nav>{nav}</nav></header>{body}</main></body></html>"
    )


def write_report(inputs: ReportInputs, out: str | Path, *, figures_dir: str | Path | None = None,
                 overwrite: bool = False, **kwargs: Any) -> Path:
    """Render the report and write ``out`` (and the PNGs into ``figures_dir``) atomically.

    Parameters
    ----------
    inputs
        What to report on.
    out
        The ``report.html`` path.
    figures_dir
        Optional folder that receives every figure as a PNG (for ``snakemake --report``).
    overwrite
        Replace existing outputs.
    **kwargs
        Passed to :func:`render_report` (``max_umap_cells``, ``max_scatter_cells``, ``seed``).
    """
    out = Path(out)
    if figures_dir is None:
        with atomic_path(out, overwrite=overwrite) as tmp:
            tmp.write_text(render_report(inputs, **kwargs), encoding="utf-8")
        return out
    with atomic_path(figures_dir, overwrite=overwrite) as fig_tmp:
        fig_tmp.mkdir()
        text = render_report(inputs, figures_dir=fig_tmp, **kwargs)
        with atomic_path(out, overwrite=overwrite) as tmp:
            tmp.write_text(text, encoding="utf-8")
    log.info("wrote %s", out)
    return out
