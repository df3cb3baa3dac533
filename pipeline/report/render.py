"""The per-dataset ``report.html``: one self-contained page (figures embedded as base64 PNG, inline CSS).

Sections: dataset and QC summary, training and validation curves of every run, the temperature sweep, retrieval
metrics against the baselines, UMAPs of the embeddings, imputed against measured protein, few-label learning
curves and provenance. Every input except the run folders is optional; a missing one leaves a short note in
its section instead of a figure. This module builds each section's content (tables through pandas, figures
through :mod:`omicsclip.report.plots`); ``templates/report.html.j2`` lays out the page.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from omicsclip.conventions import label_values
from omicsclip.errors import InputError
from omicsclip.evaluation.selection import RunData, load_run
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import read_json_object
from omicsclip.report.data import (
    ReportInputs,
    embedding_subset,
    fewlabel_curves,
    held_out_cells,
    imputation_arrays,
    package_versions,
    read_inspect,
    subsample,
)

log = logging.getLogger(__name__)

METHOD_ORDER = ("omicsclip", "cca", "ridge", "pca")
TABLE_METRICS = ("recall_at_1", "recall_at_10", "recall_at_50", "foscttm", "match_score", "celltype_match",
                 "fewlabel_accuracy", "protein_pearson", "protein_rmse")
BAR_METRICS = ("recall_at_1", "recall_at_10", "recall_at_50", "foscttm", "match_score", "celltype_match",
               "fewlabel_accuracy", "protein_pearson")
UNLABELLED = "(unlabelled)"

Section = dict[str, Any]


# ----------------------------------------------------------------------------------------------- tables, figures


def fmt(v: Any, digits: int = 3) -> str:
    """Format a table value as plain text (escaping is the table's and the template's job).

    Parameters
    ----------
    v
        The value: whole numbers get thousands separators, other floats ``digits`` decimals, ``None``/NaN "–".
    digits
        Decimals of non-integer floats.

    Returns
    -------
    str
        The text shown.
    """
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
    return str(v)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, row_class: Sequence[str] | None = None,
          cell_class: Mapping[tuple[int, int], str] | None = None) -> Markup:
    """Render an HTML table with pandas; cells formatted with :func:`fmt` and escaped, numbers right-aligned.

    Parameters
    ----------
    header
        Column titles (may repeat).
    rows
        Table rows, each as long as ``header``.
    row_class
        A CSS class per row (``"sel"``: the selected run), or ``""``.
    cell_class
        Extra CSS class of single cells, ``{(row, column): class}`` (``"best"``: best value of a metric).

    Returns
    -------
    markupsafe.Markup
        The ``<table>`` (safe to insert into the template as is).
    """
    df = pd.DataFrame([list(r) for r in rows], columns=range(len(header)), dtype=object)
    classes = pd.DataFrame("", index=df.index, columns=df.columns)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            names = [(row_class or [""] * len(rows))[i], (cell_class or {}).get((i, j), ""),
                     "num" if isinstance(v, int | float) and not isinstance(v, bool) else ""]
            classes.iat[i, j] = " ".join(c for c in names if c)
    uid = hashlib.sha1(repr((list(header), [list(r) for r in rows])).encode()).hexdigest()[:8]
    styler = (df.style.hide(axis="index").format(fmt, escape="html")
              .relabel_index([str(escape(h)) for h in header], axis=1).set_td_classes(classes))
    return Markup(styler.to_html(table_uuid=uid, cell_ids=False))


def kv_table(items: Sequence[tuple[str, Any]], *, columns: int = 2, header: tuple[str, str] = ("item", "value")
             ) -> Markup:
    """Render key/value pairs as ``columns`` side-by-side column pairs (shorter than one long table).

    Parameters
    ----------
    items
        ``(key, value)`` pairs, filled column by column.
    columns
        Number of key/value column pairs.
    header
        Titles of each key and value column.

    Returns
    -------
    markupsafe.Markup
        The ``<table>``.
    """
    n_rows = math.ceil(len(items) / columns)
    rows = []
    for r in range(n_rows):
        row: list[Any] = []
        for c in range(columns):
            k = c * n_rows + r
            row += list(items[k]) if k < len(items) else ["", ""]
        rows.append(row)
    return table(list(header) * columns, rows)


class Figures:
    """Matplotlib figures as embedded PNG images (and optionally as files for ``snakemake --report``).

    Parameters
    ----------
    out_dir
        Folder that receives every figure as ``<name>.png``; ``None`` embeds only.
    dpi
        Resolution of the PNGs.
    """

    def __init__(self, out_dir: Path | None, dpi: int = 110) -> None:
        self.out_dir = out_dir
        self.dpi = dpi
        self.written: list[Path] = []

    def img(self, fig: Any, name: str, alt: str) -> dict[str, str]:
        """Render ``fig`` to PNG (written to ``out_dir/<name>.png`` when set).

        Parameters
        ----------
        fig
            A matplotlib Figure.
        name
            File name stem.
        alt
            Alternative text.

        Returns
        -------
        dict
            ``{"alt", "src"}``, ``src`` a ``data:`` URI, for the template's ``<img>``.
        """
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, facecolor="white")
        data = buf.getvalue()
        if self.out_dir is not None:
            p = self.out_dir / f"{name}.png"
            p.write_bytes(data)
            self.written.append(p)
        return {"alt": alt, "src": f"data:image/png;base64,{base64.b64encode(data).decode()}"}


def note(text: str) -> Section:
    """Return a section that is only a note (why there is nothing to show)."""
    return {"note": text}


# ----------------------------------------------------------------------------------------------- sections


def _section_dataset(info: dict[str, Any] | None, figs: Figures, label_key: str) -> Section:
    from omicsclip.report import plots

    if info is None:
        return note("No store summary (omicsclip inspect --json) was given.")
    cards = [("cells", info.get("n_cells")), ("genes", info.get("n_genes")), ("proteins", info.get("n_proteins")),
             ("RNA sparsity", info.get("sparsity_rna")), ("protein sparsity", info.get("sparsity_prot"))]
    obs = info.get("obs") or {}
    rows = []
    for col, s in obs.items():
        if isinstance(s, dict) and set(s) == {"min", "median", "max"}:
            rows.append([col, f"min {fmt(s['min'])} · median {fmt(s['median'])} · max {fmt(s['max'])}"])
        elif isinstance(s, dict) and set(s) == {"n_levels"}:
            rows.append([col, f"{s['n_levels']:,} distinct values"])
        elif isinstance(s, dict):
            shown = ", ".join(f"{k} ({v:,})" for k, v in list(s.items())[:12])
            rows.append([col, shown + (" …" if len(s) > 12 else "")])
    qc = [(k, v) for k, v in sorted((info.get("qc") or {}).items()) if not isinstance(v, dict | list)]
    counts = obs.get(label_key) if label_key and isinstance(obs.get(label_key), dict) else None
    counts_img = None
    if counts and "n_levels" not in counts and all(isinstance(v, int) for v in counts.values()):
        counts_img = figs.img(plots.bar_counts(counts, f"cells per {label_key}"), "cell_types", "cells per type")
    return {
        "cards": [(f"{v:.1%}" if isinstance(v, float) else fmt(v, 3), k) for k, v in cards if v is not None],
        "proteins": ", ".join(map(str, info.get("proteins") or [])),
        "obs_table": table(["obs column", "summary"], rows) if obs else None,
        "qc_table": kv_table(qc, columns=2, header=("QC", "value")) if info.get("qc") else None,
        "counts_img": counts_img,
    }


def _section_training(runs: list[RunData], selected: str | None, figs: Figures) -> Section:
    from omicsclip.report import plots

    logs = {r.label: r.log for r in runs if r.log}
    if not logs:
        return note("No train_log.jsonl found in the run folders.")
    return {"img": figs.img(plots.training_curves(logs, selected), "training_curves",
                            "training and validation curves")}


def _section_sweep(runs: list[RunData], selection: dict[str, Any] | None, figs: Figures) -> Section:
    from omicsclip.report import plots

    metric = (selection or {}).get("metric", "recall_at_10")
    selected = (selection or {}).get("selected")
    rows, classes, plot_rows = [], [], []
    for r in sorted(runs, key=lambda r: (r.temperature is None, r.temperature or 0)):
        val = r.validation
        test = (r.metrics.get("methods") or {}).get("omicsclip", {})
        epochs = [x.get("epoch") for x in r.log if isinstance(x.get("epoch"), int | float)]
        rows.append([r.label, r.temperature, len(epochs) or None, val.get("recall_at_1"), val.get("recall_at_10"),
                     val.get("foscttm"), test.get("recall_at_10"), test.get("foscttm"),
                     "✔" if r.label == selected else ""])
        classes.append("sel" if r.label == selected else "")
        plot_rows.append({"temperature": r.temperature, "validation": val, "selected": r.label == selected})
    header = ["run", "temperature", "epochs", "val recall@1", "val recall@10", "val FOSCTTM", "test recall@10",
              "test FOSCTTM", "selected"]
    img = None
    if sum(1 for p in plot_rows if p["temperature"] is not None and p["validation"]) >= 2:
        img = figs.img(plots.temperature_sweep(plot_rows, metric), "temperature_sweep", "temperature sweep")
    return {"table": table(header, rows, row_class=classes), "img": img, "metric": metric,
            "selection": selection is not None and bool(selection),
            "higher_is_better": (selection or {}).get("higher_is_better", True)}


def _section_metrics(best: RunData | None, figs: Figures) -> Section:
    from omicsclip.report import plots

    if best is None or not best.metrics.get("methods"):
        return note("No metrics.json for the selected run.")
    methods = best.metrics["methods"]
    names = [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]
    keys = [k for k in TABLE_METRICS if any(isinstance(methods[m].get(k), int | float) for m in names)]
    if not keys:
        raise InputError(f"run {best.label}: metrics.json has no numeric metrics to show")
    cell_class = {}
    for j, k in enumerate(keys, start=1):
        vals = [methods[m].get(k) for m in names]
        nums = [v for v in vals if isinstance(v, int | float)]
        if len(nums) > 1:
            target = min(nums) if k in plots.LOWER_IS_BETTER else max(nums)
            for i, v in enumerate(vals):
                if v == target:
                    cell_class[(i, j)] = "best"
    rows = [[m] + [methods[m].get(k) for k in keys] for m in names]
    header = ["method"] + [plots.METRIC_LABELS.get(k, k) for k in keys]
    out: Section = {"table": table(header, rows, cell_class=cell_class),
                    "n_test": fmt(best.metrics.get("n_test_cells")),
                    "img": figs.img(plots.metrics_bars({m: methods[m] for m in names}, BAR_METRICS),
                                    "retrieval_vs_baselines", "metrics against baselines"),
                    "per_protein": None}
    per = best.metrics.get("protein_pearson_per_protein") or {}
    if per:
        prots = sorted({p for d in per.values() if isinstance(d, dict) for p in d})
        meths = [m for m in names if m in per] + [m for m in per if m not in names]
        out["per_protein"] = table(["protein"] + meths, [[p] + [per[m].get(p) for m in meths] for p in prots])
    return out


def _section_umap(inputs: ReportInputs, figs: Figures, max_cells: int, seed: int) -> Section:
    from omicsclip.report import plots
    from omicsclip.report.projection import umap_coords

    if inputs.embeddings is None:
        return note("No embeddings were given.")
    t0 = time.perf_counter()
    mats, obs = embedding_subset(inputs.embeddings, max_cells=max_cells, seed=seed)
    key = inputs.label_key
    labels = (np.array([UNLABELLED if v is None else v for v in label_values(obs[key])], dtype=object)
              if key and key in obs.columns else np.array([UNLABELLED] * len(obs), dtype=object))
    colour = key or "label"
    panels = []
    if "joint" in mats:
        panels.append((f"joint embedding · {colour}", umap_coords(mats["joint"], seed=seed), labels))
    if "rna" in mats and "prot" in mats:
        xy = umap_coords(np.vstack([mats["rna"], mats["prot"]]), seed=seed)
        modality = np.array(["RNA"] * len(mats["rna"]) + ["protein"] * len(mats["prot"]))
        panels.append(("RNA + protein embeddings · modality", xy, modality))
        panels.append((f"RNA + protein embeddings · {colour}", xy, np.concatenate([labels, labels])))
    log.info("report: UMAPs of %d cells in %.1f s", len(obs), time.perf_counter() - t0)
    return {"img": figs.img(plots.umap_panels(panels), "umap", "UMAP of the embeddings"), "n_cells": len(obs)}


def _section_imputation(inputs: ReportInputs, figs: Figures, max_cells: int, seed: int) -> Section:
    from omicsclip.report import plots

    if inputs.query is None:
        return note("No query results were given.")
    cells = held_out_cells(inputs.embeddings)
    imputed, measured, proteins, space = imputation_arrays(inputs.query, inputs.store, cells=cells)
    idx = subsample(len(imputed), max_cells, seed)
    summary_path = Path(inputs.query) / "summary.json"
    summ = read_json_object(summary_path) if summary_path.exists() else {}
    flat = {k: v for k, v in summ.items()  # null (a non-finite number) shows as "–"
            if v is None or (isinstance(v, int | float | str) and not isinstance(v, bool))}
    return {"img": figs.img(plots.imputation_scatter(imputed[idx], measured[idx], proteins, space=space),
                            "imputation", "imputed vs measured protein"),
            "n_cells": len(imputed), "who": "held-out test cells" if cells is not None else "query cells",
            "space": space, "n_proteins": len(proteins),
            "summary": table(["key", "value"], [[k, v] for k, v in flat.items()]) if flat else None}


def _section_fewlabel(path: Path | None, figs: Figures) -> Section:
    from omicsclip.report import plots

    if path is None:
        return note("No few-label results (unlabelled dataset or step not run).")
    curves = fewlabel_curves(read_json_object(path))
    methods = {m for per in curves.values() for m in per}
    baselines = sorted(m for m in methods if m.startswith("logreg") or m in ("pca", "baseline"))
    rows = [[score, method, n, m, sd] for score, per in curves.items() for method, pts in per.items()
            for n, m, sd in pts]
    return {"img": figs.img(plots.learning_curves(curves, baselines=baselines), "fewlabel",
                            "few-label learning curves"),
            "baselines": ", ".join(baselines),
            "table": table(["score", "method", "labels per class", "mean", "s.d."], rows)}


def _section_provenance(inputs: ReportInputs, info: dict[str, Any] | None, runs: list[RunData],
                        selection: dict[str, Any] | None) -> Section:
    import yaml

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
    config = (yaml.safe_dump(inputs.config, sort_keys=False, default_flow_style=None, width=110)
              if inputs.config else None)
    return {"versions": package_versions(), "table": table(["item", "value"], rows), "config": config}


def _guard(title: str, fn: Callable[..., Section], *args: Any) -> Section:
    """Build one section; a failure becomes a note so that the other sections still render."""
    try:
        return fn(*args)
    except InputError as exc:
        log.warning("report section %r: %s", title, exc)
        return note(f"{title}: {exc}")


def _template() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("omicsclip.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2")


def render_report(inputs: ReportInputs, *, figures_dir: Path | None = None, max_umap_cells: int = 3000,
                  max_scatter_cells: int = 4000, seed: int = 0) -> str:
    """Build the report HTML.

    Parameters
    ----------
    inputs
        What to report on; :class:`InputError` when it has no run folder.
    figures_dir
        Existing folder that also receives every figure as a PNG.
    max_umap_cells
        Cells drawn in the UMAPs (a random subset).
    max_scatter_cells
        Cells drawn in the imputed-vs-measured scatter plots.
    seed
        Random seed of the subsets and the UMAP layout.

    Returns
    -------
    str
        The self-contained HTML page.
    """
    if not inputs.runs:
        raise InputError("report: at least one run folder (--run) is needed")
    runs = [load_run(r) for r in inputs.runs]
    selection = read_json_object(inputs.selection) if inputs.selection else None
    selected = (selection or {}).get("selected")
    if selected is None and len(runs) == 1:
        selected = runs[0].label
    best = next((r for r in runs if r.label == selected), None)
    info = read_inspect(inputs.inspect) if inputs.inspect else None
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
    headline = [(label, f"{om[k]:.3f}") for k, label in (("recall_at_10", "test recall@10"),
                                                          ("foscttm", "test FOSCTTM"),
                                                          ("protein_pearson", "protein r"))
                if isinstance(om.get(k), int | float)]
    return _template().render(
        dataset=inputs.dataset, selected=selected, headline=headline,
        sections=[{"id": sid, "title": title, "c": content} for sid, title, content in sections])


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

    Returns
    -------
    Path
        ``out``.
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
