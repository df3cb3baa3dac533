"""Matplotlib figures of the omicsclip report; each function returns a Figure (the caller saves/embeds it)."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.figure import Figure

F = TypeVar("F", bound=Callable[..., Any])

#: report style, applied per figure (no global matplotlib state is changed, no pyplot backend is needed)
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "axes.spines.top": False, "axes.spines.right": False}


def _styled(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _subplots(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` without pyplot: a Figure (constrained layout) and its axes."""
    fig = Figure(figsize=kw.pop("figsize", None), layout="constrained")
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


#: per-curve labels of train_log.jsonl fields
CURVES = (
    ("train_loss", "training loss (InfoNCE)", None),
    ("val_recall_at_10", "validation recall@10", "higher is better"),
    ("val_foscttm", "validation FOSCTTM", "lower is better"),
)
LOWER_IS_BETTER = ("foscttm", "protein_rmse")
METRIC_LABELS = {
    "recall_at_1": "recall@1", "recall_at_10": "recall@10", "recall_at_50": "recall@50",
    "foscttm": "FOSCTTM (lower better)", "match_score": "match score", "celltype_match": "cell-type match",
    "fewlabel_accuracy": "few-label acc.", "protein_pearson": "protein Pearson r",
    "protein_rmse": "protein RMSE (lower better)",
}


#: figure width (inches) that shows at 100 % in the report's column at the report's 110 dpi
WIDTH = 11.4


def _palette(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


@_styled
def training_curves(logs: Mapping[str, Sequence[Mapping]], selected: str | None = None) -> Figure:
    """Plot training loss and validation retrieval per epoch, one line per run (the selected run drawn thicker).

    Parameters
    ----------
    logs
        ``{run label: [train_log.jsonl records]}``.
    selected
        Label of the selected run.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels: training loss, validation recall@10, validation FOSCTTM. A model trained on several datasets
        (records with ``val_foscttm_by_group``) also gets each dataset's validation FOSCTTM in the last panel,
        for the selected run (or the only one), in thin broken lines.
    """
    from matplotlib.ticker import MaxNLocator

    fig, axes = _subplots(1, 3, figsize=(WIDTH, 3.7))
    colors = _palette(len(logs))
    for ax, (key, title, hint) in zip(axes, CURVES, strict=True):
        for (label, records), color in zip(logs.items(), colors, strict=True):
            pts = [(r.get("epoch"), r.get(key)) for r in records
                   if isinstance(r.get(key), int | float) and isinstance(r.get("epoch"), int | float)]
            if not pts:
                continue
            x, y = zip(*pts, strict=True)
            best = label == selected
            ax.plot(x, y, color=color, lw=2.8 if best else 1.4, alpha=1.0 if best else 0.8,
                    label=f"T={label}" + (" (selected)" if best else ""), marker="o" if len(x) < 15 else None,
                    ms=3)
        if key == "val_foscttm":
            _group_curves(ax, logs, colors, selected)
        ax.set_title(title + (f"\n({hint})" if hint else ""))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(handles, labels, loc="best")
    if any(line.get_label().startswith("dataset ") for line in axes[2].get_lines()):
        axes[2].legend(loc="best", fontsize="small")
    return fig


def _group_curves(ax: Any, logs: Mapping[str, Sequence[Mapping]], colors: list, selected: str | None) -> None:
    """Each dataset's validation FOSCTTM of the selected run (or the only one), thin and broken, labelled."""
    label = selected if selected in logs else (next(iter(logs)) if len(logs) == 1 else None)
    if label is None:
        return
    records = logs[label]
    color = colors[list(logs).index(label)]
    names = sorted({g for r in records if isinstance(r.get("val_foscttm_by_group"), Mapping)
                    for g in r["val_foscttm_by_group"]})
    for name, style in zip(names, itertools.cycle(("--", ":", "-.")), strict=False):
        pts = [(r["epoch"], r["val_foscttm_by_group"][name]) for r in records
               if isinstance(r.get("val_foscttm_by_group"), Mapping) and name in r["val_foscttm_by_group"]
               and isinstance(r.get("epoch"), int | float)]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, color=color, lw=1.0, ls=style, alpha=0.9, label=f"dataset {name}")


@_styled
def temperature_sweep(rows: Sequence[Mapping], metric: str = "recall_at_10") -> Figure:
    """Plot validation retrieval against the softmax temperature (log scale); the selected run is starred.

    Parameters
    ----------
    rows
        ``[{"temperature": float, "validation": {metric: value}, "selected": bool}]``.
    metric
        The selection metric (left panel); the right panel is FOSCTTM.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels.
    """
    fig, axes = _subplots(1, 2, figsize=(9.0, 3.3))
    pts = sorted((r for r in rows if r.get("temperature") is not None), key=lambda r: r["temperature"])
    for ax, key in zip(axes, (metric, "foscttm"), strict=True):
        sel = [(r["temperature"], r["validation"][key]) for r in pts if r.get("selected") and key in r["validation"]]
        xs = [r["temperature"] for r in pts if key in r["validation"]]
        ys = [r["validation"][key] for r in pts if key in r["validation"]]
        ax.plot(xs, ys, "o-", color="#1f77b4", lw=2, ms=6, zorder=3)
        if sel:
            ax.plot(*zip(*sel, strict=True), "*", color="#d62728", ms=16, label="selected", zorder=4)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=9)
        if ys:
            lo, hi = min(ys), max(ys)
            pad = max(0.15 * (hi - lo), 0.02 * max(abs(hi), 1e-3), 0.005)
            ax.set_ylim(lo - pad, hi + 2.5 * pad)
        if xs and min(xs) > 0 and max(xs) / min(xs) > 3:
            ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.minorticks_off()
        if len(xs) > 1:
            span = max(xs) / min(xs) if ax.get_xscale() == "log" else max(xs) - min(xs)
            ax.set_xlim(*((min(xs) / span ** 0.12, max(xs) * span ** 0.12) if ax.get_xscale() == "log"
                          else (min(xs) - 0.12 * span, max(xs) + 0.12 * span)))
        ax.set_xlabel("softmax temperature")
        better = "lower is better" if key == "foscttm" else "higher is better"
        ax.set_title(f"validation {METRIC_LABELS.get(key, key).split(' (')[0]} ({better})")
        ax.grid(alpha=0.3)
        if sel:
            ax.legend(loc="best")
    return fig


@_styled
def metrics_bars(methods: Mapping[str, Mapping[str, float | None]], keys: Sequence[str]) -> Figure:
    """Plot grouped bars per metric, one bar per method: higher-is-better metrics left, lower-is-better right.

    Missing values (a metric that does not apply to a method) are left out.

    Parameters
    ----------
    methods
        ``{method: {metric: value or None}}``.
    keys
        Metrics to show, in order (those no method has are dropped).

    Returns
    -------
    matplotlib.figure.Figure
        One or two panels.
    """
    names = list(methods)
    present = [k for k in keys if any(isinstance(methods[m].get(k), int | float) for m in names)]
    groups = [[k for k in present if k not in LOWER_IS_BETTER], [k for k in present if k in LOWER_IS_BETTER]]
    groups = [g for g in groups if g]
    fig, axes = _subplots(1, len(groups), figsize=(WIDTH, 4.0), squeeze=False,
                          gridspec_kw={"width_ratios": [max(len(g), 1.4) for g in groups]})
    colors = _palette(len(names))
    width = 0.8 / max(len(names), 1)
    for ax, group in zip(axes[0], groups, strict=True):
        for i, (name, color) in enumerate(zip(names, colors, strict=True)):
            ys = [methods[name].get(k) for k in group]
            ys = [v if isinstance(v, int | float) else np.nan for v in ys]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(group))]
            ax.bar(xs, ys, width=width * 0.95, color=color, label=name)
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels([METRIC_LABELS.get(k, k).split(" (")[0] for k in group], rotation=20, ha="right")
        lower = group[0] in LOWER_IS_BETTER
        ax.set_title("lower is better" if lower else "higher is better")
        if not lower:
            ax.set_ylim(0, 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("held-out test cells")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(names), frameon=False)
    return fig


def _categorical_scatter(ax, xy: np.ndarray, labels: np.ndarray, title: str, *, max_legend: int = 20,
                         colors: Mapping[str, object] | None = None) -> None:
    cats = sorted({str(v) for v in labels})
    pal = dict(zip(cats, _palette(len(cats)), strict=True)) if colors is None else colors
    order = np.random.default_rng(0).permutation(len(xy))  # no category painted on top of all others
    c = [pal[str(labels[i])] for i in order]
    ax.scatter(xy[order, 0], xy[order, 1], c=c, s=5 if len(xy) > 3000 else 9, linewidths=0, alpha=0.75)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if len(cats) <= max_legend:
        for cat in cats:
            ax.scatter([], [], color=pal[cat], s=40, label=cat)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=min(3, len(cats)), frameon=False,
                  handletextpad=0.2, columnspacing=0.8)


@_styled
def umap_panels(panels: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> Figure:
    """Plot one UMAP scatter per panel, side by side, legends underneath.

    Parameters
    ----------
    panels
        ``[(title, coordinates (n x 2), labels (n))]``; labels ``RNA``/``protein`` get fixed modality colours.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per entry.
    """
    n_leg = max(len({str(v) for v in labels}) for _, _, labels in panels)
    fig, axes = _subplots(1, len(panels), figsize=(WIDTH, 4.2 + 0.22 * min(n_leg, 20) / 3), squeeze=False)
    modality_colors = {"RNA": "#1f77b4", "protein": "#ff7f0e"}
    for ax, (title, xy, labels) in zip(axes[0], panels, strict=True):
        is_modality = set(map(str, labels)) <= set(modality_colors)
        _categorical_scatter(ax, xy, labels, title, colors=modality_colors if is_modality else None)
        ax.set_aspect("equal", adjustable="datalim")
    return fig


@_styled
def imputation_scatter(imputed: np.ndarray, measured: np.ndarray, proteins: Sequence[str], *,
                       max_proteins: int = 12, space: str = "CLR") -> Figure:
    """Plot imputed (from RNA alone) against measured protein, one panel per protein, Pearson r in the title.

    Parameters
    ----------
    imputed, measured
        Cells x proteins, on the same scale.
    proteins
        Protein names (columns).
    max_proteins
        With more proteins, only the ``max_proteins / 2`` best- and worst-imputed are shown.
    space
        Scale name for the axis labels.

    Returns
    -------
    matplotlib.figure.Figure
        Up to four panels per row.
    """
    r = np.array([_pearson(imputed[:, j], measured[:, j]) for j in range(imputed.shape[1])])
    order = np.argsort(-np.nan_to_num(r, nan=-2.0))
    if len(order) > max_proteins:
        half = max_proteins // 2
        order = np.concatenate([order[:half], order[-(max_proteins - half):]])
    ncol = min(4, len(order))
    nrow = math.ceil(len(order) / ncol)
    fig, axes = _subplots(nrow, ncol, figsize=(WIDTH * ncol / 4, 2.7 * nrow), squeeze=False)
    for ax in axes.ravel()[len(order):]:
        ax.set_visible(False)
    for ax, j in zip(axes.ravel(), order, strict=False):
        x, y = measured[:, j], imputed[:, j]
        both = np.isfinite(x) & np.isfinite(y)  # cells that measured the protein and got an imputed value
        x, y = x[both], y[both]
        ax.scatter(x, y, s=5, alpha=0.4, linewidths=0, color="#1f77b4")
        lo, hi = (min(x.min(), y.min()), max(x.max(), y.max())) if x.size else (0.0, 1.0)
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
        ax.set_title(f"{proteins[j]}  r = {r[j]:.2f}")
        ax.set_xlabel(f"measured ({space})")
        ax.set_ylabel(f"imputed ({space})")
        ax.grid(alpha=0.3)
    return fig


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)  # NaN: a protein outside a cell's panel (a pooled reference)
    a, b = a[both], b[both]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@_styled
def learning_curves(curves: Mapping[str, Mapping[str, Sequence[tuple[float, float, float]]]],
                    baselines: Sequence[str] = ()) -> Figure:
    """Plot few-label learning curves: one panel per score, one line per method with a ±1 s.d. band.

    Parameters
    ----------
    curves
        ``{score name: {method: [(labels per class, mean, sd)]}}``.
    baselines
        Methods drawn as dashed black lines (e.g. logistic regression on RNA PCs).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per score.
    """
    fig, axes = _subplots(1, len(curves), figsize=(WIDTH, 4.0), squeeze=False)
    methods = sorted({m for per in curves.values() for m in per}, key=lambda m: (m in baselines, m))
    others = [m for m in methods if m not in baselines]
    pal = dict(zip(others, _palette(len(others)), strict=True)) | {m: "black" for m in baselines}
    markers = dict(zip(others, "osD^vP*Xh<>", strict=False))
    for ax, (score, per_method) in zip(axes[0], curves.items(), strict=True):
        for method in methods:
            if method not in per_method:
                continue
            pts = sorted(per_method[method])
            x = np.array([p[0] for p in pts], dtype=float)
            m = np.array([p[1] for p in pts], dtype=float)
            s = np.array([p[2] for p in pts], dtype=float)
            base = method in baselines
            ax.plot(x, m, ls="--" if base else "-", marker=markers.get(method, "o"), color=pal[method],
                    label=method, lw=1.8, ms=5)
            if np.isfinite(s).any() and not base:
                ax.fill_between(x, m - np.nan_to_num(s), m + np.nan_to_num(s), color=pal[method], alpha=0.08)
        ax.set_xscale("log")
        xs = sorted({p[0] for pts in per_method.values() for p in pts})
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("labelled training cells per class")
        ax.set_ylabel(score.replace("_", "-"))
        ax.set_title(f"{score.replace('_', '-')} on held-out cells")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    return fig


@_styled
def bar_counts(counts: Mapping[str, int], title: str) -> Figure:
    """Plot category counts (e.g. cells per type) as horizontal bars, largest first.

    Parameters
    ----------
    counts
        ``{category: count}``.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One panel.
    """
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    fig, ax = _subplots(figsize=(5.6, 0.32 * len(items) + 1.1))
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#1f77b4")
    for i, (_, v) in enumerate(items[::-1]):
        ax.annotate(f"{v:,}", (v, i), textcoords="offset points", xytext=(3, -4), fontsize=9)
    ax.set_title(title)
    ax.set_xlabel("cells")
    ax.grid(axis="x", alpha=0.3)
    return fig
