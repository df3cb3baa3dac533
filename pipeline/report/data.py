"""What the report reads: its inputs, the store summary, embeddings subsets, query results, few-label curves.

Run folders are read by :mod:`omicsclip.evaluation.selection` (shared with ``omicsclip select``) and embeddings
by :func:`omicsclip.model.embed.open_embeddings`; this module only adds what the report alone needs.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError
from omicsclip.io.jsonfile import read_json_object
from omicsclip.model.embed import open_embeddings

#: packages whose versions the provenance section lists
VERSION_PACKAGES = ("omicsclip", "torch", "numpy", "scipy", "pandas", "anndata", "mudata", "scanpy", "zarr",
                    "faiss-cpu", "scikit-learn", "snakemake", "matplotlib")
_INSPECT_NUMBERS = ("n_cells", "n_genes", "n_proteins", "sparsity_rna", "sparsity_prot")


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
        obs column with cell types (``""`` = none; the CLI passes the dataset's or ``evaluate.label_key``).
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
    label_key: str = ""


def read_inspect(path: str | Path) -> dict[str, Any]:
    """Read ``omicsclip inspect --json`` output, with the types the report reads checked.

    Parameters
    ----------
    path
        The JSON file; a value of the wrong type is one :class:`InputError` naming the file and the key.

    Returns
    -------
    dict
        The parsed summary.
    """
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


def subsample(n: int, max_n: int, seed: int = 0) -> np.ndarray:
    """Draw a sorted random subset of ``range(n)`` of size at most ``max_n``.

    Parameters
    ----------
    n
        Number of items.
    max_n
        Largest subset size; all items when ``n <= max_n``.
    seed
        Random seed.

    Returns
    -------
    numpy.ndarray
        Sorted indices.
    """
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def embedding_subset(path: str | Path, *, max_cells: int, seed: int = 0
                     ) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Read the embeddings (``rna``/``prot``/``joint``) and obs of a random subset of cells.

    Parameters
    ----------
    path
        ``omicsclip embed`` output.
    max_cells
        Largest number of cells read (only those rows are read).
    seed
        Random seed of the subset.

    Returns
    -------
    tuple
        ``({modality: cells x d}, obs of those cells)``.
    """
    emb = open_embeddings(path)
    idx = subsample(emb.n_cells, max_cells, seed)
    mats = {mod: emb.matrix(mod, rows=idx) for mod in emb.modalities}
    return mats, emb.obs.iloc[idx].copy()


def held_out_cells(embeddings: str | Path | None) -> list[str] | None:
    """Barcodes of the held-out test cells from the embeddings' ``split`` column.

    Parameters
    ----------
    embeddings
        ``omicsclip embed`` output, or ``None``.

    Returns
    -------
    list of str or None
        ``None`` when unknown (no embeddings, unreadable ones, or no ``split`` column).
    """
    if embeddings is None:
        return None
    try:
        obs = open_embeddings(embeddings).obs
    except InputError:  # the UMAP section reports unreadable embeddings
        return None
    if "split" not in obs.columns:
        return None
    return [str(c) for c in obs.index[obs["split"].astype(str) == "test"]]



def imputation_arrays(query_dir: str | Path, store: str | Path | None, *, cells: Sequence[str] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Imputed protein of the query cells and the measured values on the same (CLR) scale.

    The query's ``imputed_protein.h5ad`` holds imputed values (``X``) and, when it has them, the measured ones
    (layer ``measured``); otherwise the measured raw counts are read from ``store`` and CLR-transformed on the
    imputed protein panel, as the reference protein was. In a store pooled from several panels, a protein outside
    a cell's panel is NaN in ``measured`` (each cell's CLR is over its own panel); the plots skip NaN pairs.

    Parameters
    ----------
    query_dir
        ``omicsclip query`` output folder.
    store
        The paired store (used only without a ``measured`` layer).
    cells
        Restrict to these barcodes (e.g. the held-out test cells).

    Returns
    -------
    tuple
        ``(imputed, measured, proteins, scale)``.
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
    """Learning curves ``{score: {method: [(labels per class, mean, sd)]}}`` from a ``fewlabel.json``.

    Parameters
    ----------
    data
        The parsed file. Understands per-draw or aggregated records — any list of dicts with
        ``labels_per_class`` (or ``n_labels``), an optional ``method``/``fusion`` and numeric
        ``accuracy``/``macro_f1`` (``*_mean``/``*_std``) fields — found under ``curves``, ``results`` or
        ``records``, or nested ``{method: {n: {score: ...}}}``.

    Returns
    -------
    dict
        Mean and s.d. over draws per point; :class:`InputError` when there is none.
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
    """Installed versions of ``names`` and of Python.

    Parameters
    ----------
    names
        Distribution names.

    Returns
    -------
    dict
        ``{name: version}`` (``"-"`` for packages that are not installed).
    """
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out
