"""Few-label evaluation: learning curves of every head, a logistic-regression baseline, and a robustness run.

For each number of labels per class (``evaluate.labels_per_class``) and each of ``n_draws`` seeded draws,
that many labelled cells per class are drawn from the TRAINING split (a class with fewer training cells
contributes all of them); every head (each fusion and each single modality) is fitted on them and evaluated on
the labelled TEST split cells: accuracy, macro-F1, expected calibration error; mean ± sd over draws.

Baseline: logistic regression (scikit-learn, C=1) on ``n_pcs`` RNA principal components, fitted on the same
labelled cells. The PCs come from ``obsm["X_pca_rna"]`` of the embedding file when present, or are passed in by
the caller (``pcs``; the CLI computes them from ``--store`` with ``--model``'s preprocessing, PCA fitted on
training cells).

Robustness: the heads fitted above predict test cells of which a random half has one modality replaced by noise.
The primary scenario ``noise`` replaces, for each cell of that half, one modality chosen at random by a random unit
vector (the presence mask still says "present": the head is not told). Random unit vectors are used because they
need no model or raw data, are reproducible, and model a failed/garbage modality (e.g. a broken antibody panel)
— off the data manifold. Extra scenarios give per-modality detail: ``rna_noise``/``prot_noise`` (that modality
only) and ``rna_swap``/``prot_swap`` (that modality replaced by another test cell's embedding, which is exactly
the embedding of shuffled raw input — an on-manifold conflict that no per-cell rule can resolve).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.conventions import MODALITIES
from omicsclip.errors import InputError
from omicsclip.heads import (
    MULTIMODAL_FUSIONS,
    HeadParams,
    classification_metrics,
    fit_head,
    label_array,
    predict_head,
    read_embedding,
    sample_per_class,
)
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import write_json
from omicsclip.model.embed import open_embeddings

log = logging.getLogger(__name__)

METHODS = (*MULTIMODAL_FUSIONS, *MODALITIES)
BASELINE = "logreg_rna_pcs"
SCENARIOS = ("noise", "rna_noise", "prot_noise", "rna_swap", "prot_swap")
PCS_KEY = "X_pca_rna"
METRIC_NAMES = ("accuracy", "macro_f1", "ece")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def corrupt(
    z_rna: np.ndarray, z_prot: np.ndarray, scenario: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace one modality of a random half of the cells (see the module docstring for ``scenario``).

    Parameters
    ----------
    z_rna, z_prot
        (n, d) embeddings (not modified).
    scenario
        One of :data:`SCENARIOS`.
    rng
        Random generator of the cells, modalities and replacements.

    Returns
    -------
    tuple
        The corrupted copies of ``z_rna`` and ``z_prot`` and an (n, 2) boolean array marking the replaced
        embeddings.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    n = len(z_rna)
    zs = [np.array(z_rna, np.float32, copy=True), np.array(z_prot, np.float32, copy=True)]
    hit = np.zeros((n, 2), bool)
    half = rng.choice(n, size=n // 2, replace=False)
    if scenario == "noise":
        hit[half, rng.integers(0, 2, size=len(half))] = True
    else:
        hit[half, MODALITIES.index(scenario.split("_")[0])] = True
    for j in range(2):
        rows = np.flatnonzero(hit[:, j])
        if not len(rows):
            continue
        if scenario.endswith("swap"):
            donors = (rows + rng.integers(1, n, size=len(rows))) % n  # always another cell
            zs[j][rows] = np.asarray((z_rna, z_prot)[j], np.float32)[donors]
        else:
            zs[j][rows] = _unit(rng.standard_normal((len(rows), zs[j].shape[1])))
    return zs[0], zs[1], hit


def logreg_baseline(pcs_train: np.ndarray, y_train: np.ndarray, pcs_test: np.ndarray, n_classes: int,
                    seed: int = 0) -> np.ndarray:
    """Return the class probabilities (n_test, n_classes) of logistic regression (C=1, lbfgs) on RNA PCs.

    Parameters
    ----------
    pcs_train, y_train
        PCs and integer classes of the labelled cells.
    pcs_test
        PCs of the cells to predict.
    n_classes
        Number of classes (a class absent from ``y_train`` gets probability 0).
    seed
        Solver seed.
    """
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed).fit(pcs_train, y_train)
    probs = np.zeros((len(pcs_test), n_classes))
    probs[:, clf.classes_] = clf.predict_proba(pcs_test)
    return probs


def _summary(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
            "values": [float(x) for x in v]}


def fewlabel_arrays(
    z_rna: np.ndarray,
    z_prot: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    *,
    params: HeadParams,
    labels_per_class: tuple[int, ...],
    n_draws: int,
    methods: tuple[str, ...] = METHODS,
    pcs: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    eval_split: str = "test",
    scenarios: tuple[str, ...] = SCENARIOS,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Compute learning curves and robustness on in-memory embeddings (see the module docstring).

    Parameters
    ----------
    z_rna, z_prot
        (n, d) embeddings of all cells.
    labels
        (n,) object array, ``None`` = unlabelled (see :func:`omicsclip.heads.label_array`).
    split
        (n,) "train"/"val"/"test" per cell.
    params
        Head hyper-parameters (``fusion`` is overridden per method).
    labels_per_class
        Points of the learning curve.
    n_draws
        Seeded label draws per point.
    methods
        Heads to evaluate (fusions and/or ``rna``/``prot``).
    pcs
        (n, n_pcs) RNA PCs for the logistic-regression baseline, or ``None`` to skip it.
    mask
        (n, 2) presence mask (default: all present).
    eval_split
        Split evaluated (``test``; ``val`` for tuning without touching the test cells).
    scenarios
        Robustness scenarios to run (empty: none).
    seed
        Base seed of label draws, heads and corruption.
    progress
        Show a progress bar (default: when stderr is a terminal).

    Returns
    -------
    dict
        ``curves[method][n_per_class][metric] = {mean, sd, values}``, ``robustness[method][n][scenario]``,
        ``classes``, ``n_eval_cells`` and the protocol (labels per class, draws, methods, scenarios).
    """
    from tqdm.auto import tqdm

    labels = np.asarray(labels, dtype=object)
    split = np.asarray(split).astype(str)
    valid = np.array([lab is not None for lab in labels])
    train = (split == "train") & valid
    pool = np.flatnonzero(split == "train")  # unlabelled use only (gate / variance branch), never test cells
    classes = sorted({labels[i] for i in np.flatnonzero(train)})
    if len(classes) < 2:
        raise InputError(f"few-label evaluation needs at least 2 classes among training cells, got {classes}")
    cls_index = {c: i for i, c in enumerate(classes)}
    test = np.flatnonzero((split == eval_split) & np.array([lab in cls_index for lab in labels]))
    if len(test) == 0:
        raise InputError(f"no labelled {eval_split!r} cells of the training classes to evaluate on")
    y_all = np.array([cls_index.get(lab, -1) for lab in labels])
    y_test = y_all[test]
    mask = np.ones((len(labels), 2), np.float32) if mask is None else np.asarray(mask, np.float32)
    corrupted = {}
    for k, sc in enumerate(scenarios):
        rng = np.random.default_rng([seed, 99, k])
        corrupted[sc] = corrupt(z_rna[test], z_prot[test], sc, rng)
    all_methods = [*methods, *([BASELINE] if pcs is not None else [])]
    raw: dict[str, dict[int, dict[str, list[float]]]] = {m: {} for m in all_methods}
    rob: dict[str, dict[int, dict[str, dict[str, list[float]]]]] = {m: {} for m in methods}
    n_lab: dict[int, list[int]] = {}
    jobs = [(n, d) for n in labels_per_class for d in range(n_draws)]
    show = sys.stderr.isatty() if progress is None else progress
    t0 = time.perf_counter()
    for n, d in tqdm(jobs, desc="few-label draws", disable=not show):
        idx = sample_per_class(labels, train, int(n), np.random.default_rng([seed, int(n), d]))
        n_lab.setdefault(n, []).append(int(len(idx)))
        y = y_all[idx]
        for method in methods:
            p = replace(params, fusion=method, seed=seed + d)
            head = fit_head(z_rna[idx], z_prot[idx], y, len(classes), p, mask=mask[idx],
                            unlabelled=(z_rna[pool], z_prot[pool]), unlabelled_mask=mask[pool])
            pred = predict_head(head, z_rna[test], z_prot[test], mask=mask[test], mc_samples=p.mc_samples,
                                seed=p.seed)
            clean = classification_metrics(pred["probs"], y_test)
            for k in METRIC_NAMES:
                raw[method].setdefault(n, {}).setdefault(k, []).append(clean[k])
            for sc, (cr, cp, hit) in corrupted.items():
                pr = predict_head(head, cr, cp, mask=mask[test], mc_samples=p.mc_samples, seed=p.seed)
                m = classification_metrics(pr["probs"], y_test)
                slot = rob[method].setdefault(n, {}).setdefault(sc, {})
                for k in METRIC_NAMES:
                    slot.setdefault(k, []).append(m[k])
                slot.setdefault("accuracy_drop", []).append(clean["accuracy"] - m["accuracy"])
                w = pr["weights"]
                for j, mod in enumerate(MODALITIES):  # mean weight the head gave the corrupted modality
                    rows = hit[:, j]
                    if rows.any() and np.isfinite(w[rows, j]).all():
                        slot.setdefault(f"weight_on_corrupted_{mod}", []).append(float(w[rows, j].mean()))
        if pcs is not None:
            probs = logreg_baseline(pcs[idx], y, pcs[test], len(classes), seed=seed + d)
            m = classification_metrics(probs, y_test)
            for k in METRIC_NAMES:
                raw[BASELINE].setdefault(n, {}).setdefault(k, []).append(m[k])
    log.info("few-label evaluation: %d draws x %d heads in %.1fs", len(jobs), len(methods), time.perf_counter() - t0)
    curves = {m: {str(n): {k: _summary(v) for k, v in per.items()} for n, per in raw[m].items()} for m in raw}
    robustness = {m: {str(n): {sc: {k: _summary(v) for k, v in d.items()} for sc, d in per.items()}
                      for n, per in rob[m].items()} for m in rob}
    result = {
        "classes": classes,
        "n_eval_cells": int(len(test)),
        "eval_split": eval_split,
        "eval_class_counts": {c: int((y_test == i).sum()) for i, c in enumerate(classes)},
        "labels_per_class": [int(n) for n in labels_per_class],
        "n_labelled": {str(n): v for n, v in n_lab.items()},
        "n_draws": int(n_draws),
        "methods": list(all_methods),
        "scenarios": list(scenarios),
        "curves": curves,
        "robustness": robustness,
    }
    return result


def markdown_table(result: dict[str, Any], metric: str = "accuracy") -> str:
    """Return the learning curves as a markdown table: rows = methods, columns = labels per class, ``mean ± sd``.

    Parameters
    ----------
    result
        :func:`fewlabel_arrays` or :func:`run_fewlabel` output.
    metric
        ``accuracy``, ``macro_f1`` or ``ece``.
    """
    ns = [str(n) for n in result["labels_per_class"]]
    cells = {}
    for m in result["methods"]:
        per = result["curves"].get(m, {})
        cells[m] = ["–" if (st := per.get(n, {}).get(metric)) is None else f"{st['mean']:.3f} ± {st['sd']:.3f}"
                    for n in ns]
    table = pd.DataFrame.from_dict(cells, orient="index", columns=[f"{n}/class" for n in ns])
    return table.rename_axis(metric).to_markdown(disable_numparse=True)


def robustness_table(result: dict[str, Any], level: int) -> str:
    """Return clean vs corrupted accuracy per head at ``level`` labels per class as a markdown table.

    One column per scenario, the change vs clean in brackets.

    Parameters
    ----------
    result
        :func:`fewlabel_arrays` or :func:`run_fewlabel` output.
    level
        Labels per class (a point of the learning curve).
    """
    key = str(level)
    scs = result.get("scenarios", [])
    rows = {}
    for m, per in result.get("robustness", {}).items():
        if key not in per:
            continue
        clean = result["curves"][m][key]["accuracy"]["mean"]
        rows[m] = [f"{clean:.3f}", *(f"{per[key][sc]['accuracy']['mean']:.3f} "
                                     f"({-per[key][sc]['accuracy_drop']['mean']:+.3f})" for sc in scs)]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["clean", *scs])
    return table.rename_axis("head").to_markdown(disable_numparse=True)


def rna_pcs_from_store(store: str | Path, model_dir: str | Path, barcodes: list[str], n_pcs: int,
                       split: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Return RNA PCs of the embedding's cells, computed from the store with the model's preprocessing.

    The PCs are ``n_pcs`` principal components of the model's scaled highly variable genes
    (:func:`omicsclip.evaluation.evaluate.scaled_gene_rows`), the PCA fitted on training cells.

    Parameters
    ----------
    store
        The paired store the embedding was made from.
    model_dir
        The model folder (its saved preprocessing state is applied).
    barcodes
        Cells (embedding order) to return PCs for; all must be in the store.
    n_pcs
        Number of components.
    split
        Per-cell split in ``barcodes`` order; the PCA is fitted on ``train`` cells (all cells when ``None``).
    seed
        PCA solver seed.
    """
    from omicsclip.evaluation.evaluate import baseline_pcs, scaled_gene_rows
    from omicsclip.io.store import read_store
    from omicsclip.model.modelio import load_model

    model = load_model(model_dir)
    data = read_store(store)
    pos = pd.Index(data.barcodes).get_indexer(barcodes)
    if (pos < 0).any():
        raise InputError(f"{store}: {int((pos < 0).sum())} cells of the embedding are not in the store")
    rows = scaled_gene_rows(model, data.rna[pos], data.gene_names)
    train_rows = np.flatnonzero(np.asarray(split) == "train") if split is not None else np.arange(len(pos))
    return baseline_pcs(rows, len(pos), train_rows, n_pcs, seed)[0].astype(np.float32)


def run_fewlabel(
    emb_path: str | Path,
    out: str | Path,
    *,
    label_key: str,
    ignore_labels: tuple[str, ...] | list[str],
    labels_per_class: tuple[int, ...] | list[int],
    n_draws: int,
    section: dict[str, Any],
    n_pcs: int,
    store: str | Path | None = None,
    model: str | Path | None = None,
    eval_split: str = "test",
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Compute learning curves and robustness on an embeddings file and write them as JSON (``fewlabel``).

    Parameters
    ----------
    emb_path
        Embedding AnnData zarr (``omicsclip embed`` output; needs obs ``split`` and ``label_key``).
    out
        Output JSON path.
    label_key, ignore_labels
        Label column and values excluded from the class set (treated as unlabelled).
    labels_per_class, n_draws
        Learning-curve points and draws per point.
    section
        The validated ``finetune:`` config section (head hyper-parameters).
    store, model
        Optional: compute the RNA-PC baseline from the store, on the model's scaled HVGs (otherwise
        ``obsm["X_pca_rna"]`` of the embedding is used when present, else the baseline is skipped).
    n_pcs
        PCs for the baseline.
    eval_split
        Split to evaluate on (``test``; ``val`` for tuning).
    seed
        Base seed.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    dict
        The document written: the :func:`fewlabel_arrays` result with the inputs and settings.
    """
    from omicsclip.io.atomic import check_writable

    out = Path(out)
    check_writable(out, overwrite=overwrite, inputs=(emb_path, store, model))
    if (store is None) != (model is None):
        raise InputError("the RNA-PC baseline needs both --store and --model")
    params = HeadParams.from_section(section)
    opened = open_embeddings(emb_path)
    emb = read_embedding(opened)
    if emb.split is None:
        raise InputError(f"{emb_path}: obs has no 'split' column (train/val/test); is this an `omicsclip embed` output?")
    labels = label_array(emb.obs, label_key, ignore_labels, source=str(emb_path))
    pcs, pcs_source = None, None
    if store is not None:
        pcs = rna_pcs_from_store(store, model, [str(b) for b in emb.obs.index], n_pcs, emb.split, seed)
        pcs_source = f"computed from {store} with the preprocessing of {model} (PCA fitted on training cells)"
    else:
        pcs = opened.obsm(PCS_KEY)[:, :n_pcs] if PCS_KEY in opened.obsm_keys else None
        if pcs is not None:
            pcs_source = f"obsm[{PCS_KEY!r}] of {emb_path}"
        else:
            log.warning("no RNA PCs (obsm[%r] absent and no --store/--model): skipping the %s baseline",
                        PCS_KEY, BASELINE)
    result = fewlabel_arrays(emb.z_rna, emb.z_prot, labels, emb.split, params=params,
                             labels_per_class=tuple(int(n) for n in labels_per_class), n_draws=n_draws, pcs=pcs,
                             mask=emb.mask, eval_split=eval_split, seed=seed)
    from omicsclip import __version__

    doc = {
        "embedding": str(emb_path),
        "model_fingerprint": emb.fingerprint,
        "label_key": label_key,
        "ignore_labels": list(ignore_labels),
        "seed": seed,
        "baseline_pcs": pcs_source,
        "noise": "primary scenario 'noise': half of the evaluated cells get one modality (chosen at random per "
                 "cell) replaced by a random unit vector; *_swap: replaced by another cell's embedding",
        "params": asdict(params),
        **result,
        "omicsclip_version": __version__,
    }
    with atomic_path(out, overwrite=overwrite) as tmp:
        write_json(tmp, doc)
    log.info("wrote %s\n%s", out, markdown_table(doc))
    return doc
