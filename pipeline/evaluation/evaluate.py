"""``omicsclip evaluate``: omicsclip and the PCA / CCA / ridge baselines on the same held-out cells.

Everything is computed on the model's split (``split.tsv``): baselines and classifiers are fitted on the
training cells, metrics are reported on the test cells, and omicsclip's retrieval metrics on the validation cells
go into ``validation`` (for temperature selection; never select on test). Each method's matching temperature
(for the NeurIPS 2021 match score) is calibrated on the validation cells.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.conventions import label_values
from omicsclip.errors import InputError
from omicsclip.evaluation import metrics as M
from omicsclip.evaluation.baselines import CCABaseline, RidgeBaseline, fit_pca
from omicsclip.index.impute import knn_impute
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import write_json

log = logging.getLogger(__name__)

METHODS = ("omicsclip", "cca", "ridge", "pca")
METRIC_KEYS = ("foscttm", "recall_at_1", "recall_at_10", "recall_at_50", "match_score", "celltype_match",
               "fewlabel_accuracy", "protein_pearson", "protein_rmse")
_CHUNK_CELLS = 8192
PCA_FIT_MAX_CELLS = 50_000  # the baselines' PCA is fitted on at most this many (random) training cells (dense HVGs)

RnaRows = Callable[[np.ndarray], np.ndarray]


def _empty_row() -> dict[str, float | None]:
    return {k: None for k in METRIC_KEYS}


def _labels(obs: pd.DataFrame, label_key: str) -> np.ndarray | None:
    """Labels as an object array with ``None`` for unlabelled cells; ``None`` when there is no usable column.

    Unlabelled is :func:`omicsclip.conventions.label_values`' rule; no value is ignored besides (a label such
    as ``unknown`` stays a class here, as the metrics have always counted it).
    """
    if not label_key or label_key not in obs.columns:
        if label_key:
            log.info("evaluate: obs has no column %r; label metrics are null", label_key)
        return None
    y = label_values(obs[label_key])
    if all(v is None for v in y):
        return None
    return y


def _retrieval(a: np.ndarray, b: np.ndarray, y: np.ndarray | None, temperature: float) -> dict[str, float | None]:
    return M.retrieval_metrics(a, b, labels=y, temperature=temperature)


def _fewlabel(train_x: np.ndarray, y_train: np.ndarray | None, test_x: np.ndarray, y_test: np.ndarray | None,
              *, fraction: float, seed: int) -> float | None:
    if y_train is None or y_test is None:
        return None
    tr = np.array([v is not None for v in y_train])
    te = np.array([v is not None for v in y_test])
    if tr.sum() < 2 or te.sum() < 1 or len(set(y_train[tr])) < 2:
        return None
    return M.fewlabel_accuracy(train_x[tr], y_train[tr], test_x[te], y_test[te], fraction=fraction, seed=seed)


def _imputation(pred: np.ndarray, true: np.ndarray, proteins: Sequence[str]) -> tuple[dict, dict]:
    r = M.protein_pearson(pred, true)
    finite = r[np.isfinite(r)]
    flat = {"protein_pearson": float(finite.mean()) if finite.size else None,
            "protein_rmse": M.protein_rmse(pred, true)}
    per = {str(p): (float(v) if np.isfinite(v) else None) for p, v in zip(proteins, r, strict=True)}
    return flat, per


def evaluate_arrays(
    *,
    emb_rna: np.ndarray,
    emb_prot: np.ndarray,
    rna_input: np.ndarray | RnaRows,
    prot_clr: np.ndarray,
    split: Sequence[str] | np.ndarray,
    labels: np.ndarray | None,
    proteins: Sequence[str],
    fewlabel_fraction: float,
    n_pcs: int,
    impute_k: int,
    impute_temperature: float,
    impute_from: str,
    seed: int,
) -> dict[str, Any]:
    """Compute all metrics for omicsclip and the baselines from in-memory arrays (rows = cells, aligned).

    Parameters
    ----------
    emb_rna, emb_prot
        omicsclip's RNA and protein embeddings (n × d).
    rna_input
        The scaled highly-variable-gene values (n × model genes, :func:`scaled_gene_rows`), or a function
        returning their rows for given positions (so the dense matrix never has to exist as a whole); the
        baselines' PCA (``n_pcs``) is fitted on (at most ``PCA_FIT_MAX_CELLS`` of) the training rows.
    prot_clr
        CLR-transformed protein (n × proteins) with the model's CLR; the target of imputation and the baselines'
        protein features (standardised on training cells).
    split
        ``"train"``, ``"val"`` or ``"test"`` per cell.
    labels
        Cell-type labels (object array, ``None`` = unlabelled) or ``None``: label metrics are then null.
    proteins
        Protein names (columns of ``prot_clr``).
    fewlabel_fraction
        Fraction of the training cells that get a label in the few-label classifier
        (``evaluate.fewlabel_fraction``).
    n_pcs
        RNA principal components of the baselines (``evaluate.n_pcs``).
    impute_k, impute_temperature, impute_from
        omicsclip's protein imputation from RNA, as ``omicsclip query`` does it (``query.impute_k``,
        ``query.temperature``, ``query.transfer_from``: neighbours among the training cells' RNA (``same``) or
        protein (``cross``) embeddings).
    seed
        Seed of PCA and the few-label draws.

    Returns
    -------
    dict
        The ``metrics.json`` content (see :func:`evaluate`).
    """
    split = np.asarray(split).astype(str)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    if len(tr) < 3 or len(te) < 2:
        raise InputError(f"evaluate: need >= 3 training and >= 2 test cells, got {len(tr)} and {len(te)}")
    have_val = len(va) >= 2
    y = labels
    y_tr, y_va, y_te = (None, None, None) if y is None else (y[tr], y[va], y[te])
    prot_clr = np.asarray(prot_clr, dtype=np.float64)
    methods = {m: _empty_row() for m in METHODS}
    per_protein: dict[str, dict[str, float | None]] = {}
    temps: dict[str, float] = {}

    def calibrated(name: str, a_val: np.ndarray | None, b_val: np.ndarray | None) -> float:
        temps[name] = M.best_match_temperature(a_val, b_val) if a_val is not None else M.MATCH_TEMPERATURE
        return temps[name]

    # ---- omicsclip
    log.info("evaluate: omicsclip")
    t = calibrated("omicsclip", emb_rna[va] if have_val else None, emb_prot[va] if have_val else None)
    row = methods["omicsclip"]
    row.update(_retrieval(emb_rna[te], emb_prot[te], y_te, t))
    row["fewlabel_accuracy"] = _fewlabel(emb_rna[tr], y_tr, emb_rna[te], y_te, fraction=fewlabel_fraction,
                                         seed=seed)
    # as `omicsclip query` imputes from an index of the training cells (same direction, k and weights)
    ref_emb = emb_rna if impute_from == "same" else emb_prot
    imputed = knn_impute(emb_rna[te], ref_emb[tr], prot_clr[tr], k=impute_k, temperature=impute_temperature)
    flat, per_protein["omicsclip"] = _imputation(imputed, prot_clr[te], proteins)
    row.update(flat)
    validation: dict[str, Any] = {"n_val_cells": int(len(va))}
    if have_val:
        validation.update(_retrieval(emb_rna[va], emb_prot[va], y_va, t))

    # ---- baselines, all on the same preprocessing, fitted on training cells
    log.info("evaluate: PCA (%d PCs)", n_pcs)
    pcs, pca = baseline_pcs(rna_input, len(split), tr, n_pcs, seed)
    methods["pca"]["fewlabel_accuracy"] = _fewlabel(pcs[tr], y_tr, pcs[te], y_te, fraction=fewlabel_fraction,
                                                    seed=seed)

    log.info("evaluate: CCA")
    cca = CCABaseline().fit(pcs[tr], prot_clr[tr])
    x_te, p_te = cca.transform(pcs[te], prot_clr[te])
    t = calibrated("cca", *(cca.transform(pcs[va], prot_clr[va]) if have_val else (None, None)))
    methods["cca"].update(_retrieval(x_te, p_te, y_te, t))
    methods["cca"]["fewlabel_accuracy"] = _fewlabel(cca.transform_rna(pcs[tr]), y_tr, x_te, y_te,
                                                    fraction=fewlabel_fraction, seed=seed)

    log.info("evaluate: ridge")
    ridge = RidgeBaseline().fit(pcs[tr], prot_clr[tr])
    a_te, b_te = ridge.match_space(pcs[te], prot_clr[te])
    t = calibrated("ridge", *(ridge.match_space(pcs[va], prot_clr[va]) if have_val else (None, None)))
    methods["ridge"].update(_retrieval(a_te, b_te, y_te, t))
    methods["ridge"]["fewlabel_accuracy"] = _fewlabel(ridge.predict_protein(pcs[tr]), y_tr,
                                                      ridge.predict_protein(pcs[te]), y_te,
                                                      fraction=fewlabel_fraction, seed=seed)
    flat, per_protein["ridge"] = _imputation(ridge.predict_protein(pcs[te]), prot_clr[te], proteins)
    methods["ridge"].update(flat)

    return {
        "methods": methods,
        "n_test_cells": int(len(te)),
        "n_train_cells": int(len(tr)),
        "seed": int(seed),
        "validation": validation,
        "protein_pearson_per_protein": per_protein,
        "match_temperature": temps,
        "settings": {"fewlabel_fraction": float(fewlabel_fraction), "n_pcs": int(pca.n_components_),
                     "impute_k": int(impute_k), "impute_temperature": float(impute_temperature),
                     "impute_from": impute_from, "ridge_alpha": float(ridge.ridge_.alpha_),
                     "cca_components": int(cca.cca_.n_components), "labelled": y is not None},
    }


def baseline_pcs(rna_input: np.ndarray | RnaRows, n: int, train_rows: np.ndarray, n_pcs: int, seed: int):
    """Compute the baselines' RNA PCs of all cells, with a PCA fitted on training cells.

    The PCA is fitted on (at most ``PCA_FIT_MAX_CELLS``, a seeded subset of) the training rows; the PCs of all
    ``n`` cells are computed in chunks, so the dense gene matrix of all cells never exists.

    Parameters
    ----------
    rna_input
        Scaled gene values (cells × genes) or a row function (e.g. :func:`scaled_gene_rows`).
    n
        Number of cells.
    train_rows
        Positions of the training cells.
    n_pcs
        Principal components (``evaluate.n_pcs``).
    seed
        Seed of the subset and the PCA solver.

    Returns
    -------
    pcs, pca
        The PCs (n × components) and the fitted :class:`sklearn.decomposition.PCA`.
    """
    rows = rna_input if callable(rna_input) else (lambda idx: np.asarray(rna_input[idx], dtype=np.float32))
    fit_rows = train_rows
    if len(fit_rows) > PCA_FIT_MAX_CELLS:
        fit_rows = np.sort(np.random.default_rng(seed).choice(train_rows, PCA_FIT_MAX_CELLS, replace=False))
        log.info("evaluate: PCA fitted on %d of %d training cells", len(fit_rows), len(train_rows))
    pca = fit_pca(rows(fit_rows), n_pcs, seed=seed)
    pcs = np.vstack([pca.transform(rows(np.arange(s, min(s + _CHUNK_CELLS, n))))
                     for s in range(0, n, _CHUNK_CELLS)])
    return pcs, pca


def scaled_gene_rows(model: Any, rna: Any, gene_names: Any) -> RnaRows:
    """Return a function giving, for requested cells, the model's scaled highly-variable-gene values.

    The values are dense float32: normalised, log1p, scaled with the model's training statistics. The baselines
    take their own principal components of them (``evaluate.n_pcs``), not of the model's input, which may be
    fewer PCs plus a depth feature.

    Parameters
    ----------
    model
        A :class:`omicsclip.model.modelio.TrainedModel`.
    rna, gene_names
        Raw RNA counts of all cells and their gene names (matched to the model's genes).
    """
    import torch

    from omicsclip.model.alignment import align_rna

    counts, lib, _ = align_rna(rna, gene_names, model.state)

    def rows(idx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = model.pre.rna_genes(torch.from_numpy(counts[idx].toarray()).to(model.device),
                                    torch.from_numpy(lib[idx]).to(model.device))
        return x.cpu().numpy().astype(np.float32, copy=False)

    return rows


def _prot_clr(model: Any, data: Any) -> tuple[np.ndarray, list[str]]:
    """Return the CLR protein of the cells over the model proteins the store measured, and their names."""
    from omicsclip.model.alignment import align_proteins
    from omicsclip.model.preprocess import clr

    counts, present, _ = align_proteins(data.prot, data.protein_names, model.state)
    if present.ndim == 2:
        raise InputError("evaluate: the cells measured different antibody panels; evaluate one dataset of a "
                         "pooled store at a time (--dataset)")
    if not present.any():
        raise InputError("evaluate: the store measured none of the model's proteins; cannot score imputation")
    return clr(counts[:, present]), [p for p, ok in zip(model.state.proteins, present, strict=True) if ok]


def _one_dataset(data: Any, dataset: str | None, store: Path) -> Any:
    """Return the cells of ``dataset`` of a pooled store with its own proteins and genes (others: unchanged)."""
    from omicsclip.io.panels import DATASET_COLUMN, GENE_PANELS_KEY, panels_of

    panels = panels_of(data.uns)
    if panels is None:
        if dataset is not None:
            raise InputError(f"{store}: not a pooled store; --dataset does not apply")
        return data
    if dataset not in panels:
        raise InputError(f"{store}: pooled from datasets {', '.join(sorted(panels))}; choose one with --dataset "
                         f"(each is scored on its own held-out cells and antibody panel)")
    sub = data.subset(np.flatnonzero(data.obs[DATASET_COLUMN].astype(str).to_numpy() == dataset))
    cols = pd.Index(sub.protein_names).get_indexer(panels[dataset])
    sub.prot, sub.proteins = sub.prot[:, cols], sub.proteins.iloc[cols]
    gene_panels = panels_of(data.uns, GENE_PANELS_KEY)
    if gene_panels is not None:  # pooled on the union of the datasets' genes: the others are unmeasured
        cols = pd.Index(sub.gene_names).get_indexer(gene_panels[dataset])
        sub.rna, sub.genes = sub.rna[:, cols], sub.genes.iloc[cols]
    return sub


def _align_split(obs: pd.DataFrame, split: pd.Series, store: Path) -> np.ndarray:
    barcodes = obs.index.astype(str)
    missing = ~barcodes.isin(split.index.astype(str))
    if missing.any():
        raise InputError(
            f"{store}: {int(missing.sum())} cells are not in the model's split (e.g. {barcodes[missing][0]}); "
            "evaluate the store the model was trained on"
        )
    return split.reindex(barcodes).to_numpy().astype(str)


def evaluate(
    store: str | Path,
    model_dir: str | Path,
    *,
    fewlabel_fraction: float,
    n_pcs: int,
    label_key: str,
    impute_k: int,
    impute_temperature: float,
    impute_from: str,
    seed: int | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Evaluate a trained model and the baselines on the held-out cells of ``store``.

    Parameters
    ----------
    store
        The paired store the model was trained on (its barcodes must all be in the model's split).
    model_dir
        A trained model (``omicsclip train``).
    fewlabel_fraction, n_pcs
        The ``evaluate`` config section: labelled fraction of training cells, RNA PCs of the baselines.
    label_key
        obs column with cell types (``evaluate.label_key``; label metrics are null without it).
    impute_k, impute_temperature, impute_from
        Protein imputation settings (``query.impute_k``, ``query.temperature``, ``query.transfer_from``).
    seed
        Seed of PCA and few-label draws (default: the model's ``train.seed``).
    dataset
        For a store pooled from several datasets (``omicsclip pool``): score this dataset's cells on its own
        antibody panel (required there).

    Returns
    -------
    dict
        ``methods`` (omicsclip, cca, ridge, pca → flat metric maps, ``None`` where not applicable),
        ``n_test_cells``, ``seed``, ``validation`` (omicsclip on validation cells),
        ``protein_pearson_per_protein``, ``match_temperature``, ``settings``, ``model_fingerprint``, ``store``.
    """
    from omicsclip.io.store import read_store
    from omicsclip.model.modelio import load_model

    store = Path(store)
    model = load_model(model_dir)
    data = _one_dataset(read_store(store), dataset, store)
    split = _align_split(data.obs, model.split, store)
    if seed is None:
        seed = int(model.config["train"]["seed"])
    log.info("evaluate: embedding %d cells", data.n_cells)
    emb = model.embed(rna=data.rna, prot=data.prot, genes=data.gene_names, proteins=data.protein_names)
    prot_clr, proteins = _prot_clr(model, data)
    result = evaluate_arrays(
        emb_rna=emb["rna"], emb_prot=emb["prot"], rna_input=scaled_gene_rows(model, data.rna, data.gene_names),
        prot_clr=prot_clr, split=split, labels=_labels(data.obs, label_key),
        proteins=proteins, fewlabel_fraction=fewlabel_fraction, n_pcs=n_pcs,
        impute_k=impute_k, impute_temperature=impute_temperature, impute_from=impute_from, seed=seed,
    )
    result["model_fingerprint"] = str(model.fingerprint)
    result["store"] = str(store)
    result["label_key"] = label_key
    if dataset is not None:
        result["dataset"] = dataset
    return result


def write_metrics(result: dict[str, Any], out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``metrics.json`` atomically with :func:`omicsclip.io.jsonfile.write_json` (NaN becomes ``null``).

    Parameters
    ----------
    result
        What :func:`evaluate` returns.
    out
        The file to write.
    overwrite
        Replace an existing file.
    """
    out = Path(out)
    with atomic_path(out, overwrite=overwrite) as tmp:
        write_json(tmp, result)
    return out


def run_evaluate(
    store: str | Path,
    model_dir: str | Path,
    out: str | Path,
    *,
    evaluate_cfg: dict[str, Any],
    query_cfg: dict[str, Any],
    overwrite: bool = False,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Evaluate and write ``metrics.json`` (the CLI's one call).

    Parameters
    ----------
    store, model_dir
        As for :func:`evaluate`.
    out
        ``metrics.json`` to write.
    evaluate_cfg
        The ``evaluate`` config section (``fewlabel_fraction``, ``n_pcs``, ``label_key``).
    query_cfg
        The ``query`` config section (``impute_k``, ``temperature``, ``transfer_from``): protein imputation.
    overwrite
        Replace an existing output.
    dataset
        The dataset of a pooled store to score (:func:`evaluate`).

    Returns
    -------
    dict
        What :func:`evaluate` returns (also written to ``out``).
    """
    from omicsclip.index.query import QuerySettings
    from omicsclip.io.atomic import check_writable

    q = QuerySettings.from_section(query_cfg)  # the query section's checks
    check_writable(Path(out), overwrite=overwrite, inputs=(store, model_dir))  # before the expensive part
    result = evaluate(store, model_dir, fewlabel_fraction=float(evaluate_cfg["fewlabel_fraction"]),
                      n_pcs=int(evaluate_cfg["n_pcs"]), label_key=str(evaluate_cfg["label_key"]),
                      impute_k=q.impute_k, impute_temperature=q.temperature, impute_from=q.transfer_from,
                      dataset=dataset)
    write_metrics(result, out, overwrite=overwrite)
    return result


__all__ = ["METHODS", "METRIC_KEYS", "baseline_pcs", "evaluate", "evaluate_arrays", "run_evaluate",
           "scaled_gene_rows", "write_metrics"]
