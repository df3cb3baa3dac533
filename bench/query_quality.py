"""Query quality bar: protein imputed from RNA through the index vs ridge and kNN regression on RNA PCs.

On pbmc10k_protein_v3 (shared data): ingest, train with the default config (``omicsclip.train.run.train_model``),
embed, index the *training* cells (``index.splits=[train]``), then query the held-out *test* cells given as RNA
only (:func:`omicsclip.index.query.query`, the public API). Imputed protein (CLR) is compared with the measured CLR
protein per protein (Pearson across test cells), next to two baselines fitted on the same training cells on 50 PCs
of the model's scaled highly variable genes (``omicsclip.evaluation.evaluate.scaled_gene_rows``):

- ridge RNA -> protein on 50 RNA PCs (``omicsclip.evaluation.baselines.RidgeBaseline``, penalty by leave-one-out CV);
- kNN regression on 50 RNA PCs (scikit-learn ``KNeighborsRegressor``, k and weighting chosen on validation).

omicsclip's query settings (``impute_k``, softmax ``temperature``, ``transfer_from``) are reported at the
defaults and tuned on the VALIDATION cells only (queries = validation cells, reference = training cells); the
test cells are looked at once, for the final numbers. Also reported: recall@10 of the true partner when the
held-out test cells' protein (resp. RNA) embeddings are added to the training cells' index, and the accuracy of
the transferred cell-type labels.

    .venv/bin/python bench/query_quality.py [--work DIR] [--model MODEL_DIR] [--threads 2]

Writes ``bench/results/query_quality.json`` and ``bench/results/query_quality.md``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"

GRID_K = (5, 10, 20, 30, 50)
GRID_T = (0.0, 0.02, 0.05, 0.1, 0.2)
GRID_FROM = ("same", "cross")
KNN_GRID = tuple(itertools.product((5, 10, 20, 30, 50), ("uniform", "distance")))

log = logging.getLogger("query_quality")


def pearson_per_protein(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    from omicsclip.evaluation.metrics import protein_pearson

    return protein_pearson(pred, true)


def omicsclip_grid(model, ref, data, rows_val: np.ndarray, clr_val: np.ndarray) -> list[dict]:
    """Mean Pearson on validation cells for every (transfer_from, impute_k, temperature), reference = train."""
    from omicsclip.index.impute import impute, neighbour_weights

    emb = model.embed(rna=data.rna[rows_val], genes=data.gene_names)["rna"]
    out = []
    for src in GRID_FROM:
        sims, pos = ref.search("rna" if src == "same" else "prot", emb, max(GRID_K))
        for k, t in itertools.product(GRID_K, GRID_T):
            w = neighbour_weights(sims[:, :k], t)
            r = pearson_per_protein(impute(ref.protein, pos[:, :k], w), clr_val)
            out.append({"transfer_from": src, "impute_k": k, "temperature": t, "val_mean_pearson": float(np.nanmean(r))})
    return out


def partner_recall(emb_q: np.ndarray, emb_ref: np.ndarray, partner: np.ndarray, k: int = 10) -> float:
    """Fraction of queries whose true partner (row ``partner[i]`` of ``emb_ref``) is among the top ``k``."""
    from omicsclip.index.faiss_index import IndexParams, build_index, search

    index = build_index(emb_ref, IndexParams(kind="flat"), use_gpu=False)
    pos = search(index, emb_q, k)[1]
    return float((pos == partner[:, None]).any(axis=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="pbmc10k_protein_v3")
    ap.add_argument("--work", type=Path, default=None, help="keep store/model/embeddings/index here (reused)")
    ap.add_argument("--model", type=Path, default=None, help="use this trained model instead of training")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "query_quality.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import faiss
    import torch

    from omicsclip.config import default_config
    from omicsclip.conventions import label_values
    from omicsclip.evaluation.baselines import RidgeBaseline
    from omicsclip.index.from_embeddings import index_embeddings
    from omicsclip.index.query import query
    from omicsclip.index.reference import ReferenceIndex
    from omicsclip.io.ingest import ingest
    from omicsclip.io.store import read_store
    from omicsclip.model.alignment import align_proteins
    from omicsclip.model.embed import embed_store
    from omicsclip.model.modelio import load_model
    from omicsclip.model.preprocess import clr
    from omicsclip.train.run import train_model

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    h5ad = SHARED / args.dataset / f"{args.dataset}.h5ad"
    if not h5ad.exists():
        sys.exit(f"{h5ad} not found")
    cfg = default_config()
    cfg["train"]["seed"] = cfg["split"]["seed"] = args.seed
    cfg["train"]["num_threads"] = args.threads
    cfg["train"]["device"] = "cpu"
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="omicsclip-qq-")
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = work / "cells.zarr"
    if not store.exists():
        ingest([h5ad], store)
    model_dir = args.model or work / "model"
    train_seconds = None
    if not model_dir.exists():
        t = time.perf_counter()
        train_model(store, model_dir, cfg)
        train_seconds = time.perf_counter() - t
    emb = work / "emb.zarr"
    if not emb.exists():
        embed_store(store, model_dir, emb)
    index_dir = work / "index_train"
    if not index_dir.exists():
        index_embeddings(emb, index_dir, {**cfg["index"], "splits": ["train"]})

    model = load_model(model_dir)
    ref = ReferenceIndex.load(index_dir, model_fingerprint=model.fingerprint)
    data = read_store(store)
    split = model.split.reindex(data.barcodes).to_numpy().astype(str)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    counts, present, _ = align_proteins(data.prot, data.protein_names, model.state)
    prot_clr = clr(counts)
    proteins = model.proteins
    assert present.all()
    assert ref.protein_names == proteins
    assert set(ref.cell_ids) == set(np.asarray(data.barcodes)[tr])
    log.info("cells: %d train (reference), %d val, %d test", len(tr), len(va), len(te))

    # ---- baselines on 50 PCs of the model's scaled HVGs (evaluate.n_pcs), fitted on training cells
    from omicsclip.evaluation.evaluate import baseline_pcs, scaled_gene_rows

    pcs, pca = baseline_pcs(scaled_gene_rows(model, data.rna, data.gene_names), data.n_cells, tr,
                            cfg["evaluate"]["n_pcs"], args.seed)
    ridge = RidgeBaseline().fit(pcs[tr], prot_clr[tr])
    r_ridge = pearson_per_protein(ridge.predict_protein(pcs[te]), prot_clr[te])
    from sklearn.neighbors import KNeighborsRegressor

    knn_val = []
    for k, w in KNN_GRID:
        knn = KNeighborsRegressor(n_neighbors=k, weights=w).fit(pcs[tr], prot_clr[tr])
        knn_val.append({"k": k, "weights": w,
                        "val_mean_pearson": float(np.nanmean(pearson_per_protein(knn.predict(pcs[va]),
                                                                                  prot_clr[va])))})
    best_knn = max(knn_val, key=lambda d: d["val_mean_pearson"])
    knn = KNeighborsRegressor(n_neighbors=best_knn["k"], weights=best_knn["weights"]).fit(pcs[tr], prot_clr[tr])
    r_knn = pearson_per_protein(knn.predict(pcs[te]), prot_clr[te])

    # ---- omicsclip: tune on validation, then query the test cells (RNA only) through the public API
    grid = omicsclip_grid(model, ref, data, va, prot_clr[va])
    best = max(grid, key=lambda d: d["val_mean_pearson"])
    defaults = {k: cfg["query"][k] for k in ("impute_k", "temperature", "transfer_from")}
    default_val = next(g for g in grid if all(g[k] == v for k, v in defaults.items()))
    log.info("validation: default %s -> %.4f; best %s", defaults, default_val["val_mean_pearson"], best)
    test = data.subset(te)
    test.prot = None
    test.proteins = pd.DataFrame()
    results = {}
    for name, settings in (("omicsclip_default", defaults),
                           ("omicsclip_val_tuned", {k: best[k] for k in defaults})):
        t = time.perf_counter()
        res = query(test, model, ref, section={**cfg["query"], **settings})
        seconds = time.perf_counter() - t
        imp = res.imputed[test.barcodes].X
        r = pearson_per_protein(imp, prot_clr[te])
        # cells whose own label is missing or ignored ("unknown") are never a class to transfer: not scored
        truth = label_values(test.obs["cell_type"].to_numpy(), cfg["evaluate"]["ignore_labels"])
        scored = np.array([t is not None for t in truth])
        acc = float((res.labels["cell_type"].to_numpy()[scored] == truth[scored]).mean())
        conf = res.imputed.obs["confidence"].to_numpy()
        err = np.abs(imp - prot_clr[te]).mean(axis=1)
        results[name] = {"settings": settings, "per_protein": r, "mean_pearson": float(np.nanmean(r)),
                         "label_transfer_accuracy": acc, "label_cells_scored": int(scored.sum()),
                         "query_seconds": round(seconds, 2),
                         "confidence_vs_abs_error_spearman": float(pd.Series(conf).corr(pd.Series(err),
                                                                                         method="spearman"))}

    # ---- recall@10 of the true partner with the test cells added to the training cells' index
    import anndata as ad

    e = ad.read_zarr(emb)
    pos = pd.Index(e.obs_names).get_indexer(data.barcodes)
    e_rna, e_prot = e.obsm["X_omicsclip_rna"][pos], e.obsm["X_omicsclip_prot"][pos]
    ref_rows = np.concatenate([tr, te])
    partner = len(tr) + np.arange(len(te))
    recall = {"rna_to_prot": partner_recall(e_rna[te], e_prot[ref_rows], partner),
              "prot_to_rna": partner_recall(e_prot[te], e_rna[ref_rows], partner),
              "reference_cells": int(len(ref_rows)), "chance": 10 / len(ref_rows)}

    out = {
        "dataset": args.dataset, "seed": args.seed, "threads": args.threads,
        "n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(te)),
        "model_fingerprint": model.fingerprint, "train_seconds": None if train_seconds is None
        else round(train_seconds, 1), "epochs_run": _epochs(model_dir),
        "index": {"kind": ref.meta["kind"], "factory": ref.meta["factory"], "n": ref.n},
        "mean_pearson": {"omicsclip_default": results["omicsclip_default"]["mean_pearson"],
                         "omicsclip_val_tuned": results["omicsclip_val_tuned"]["mean_pearson"],
                         "ridge_50pcs": float(np.nanmean(r_ridge)), "knn_50pcs": float(np.nanmean(r_knn))},
        "per_protein": {p: {"omicsclip_default": _f(results["omicsclip_default"]["per_protein"][j]),
                            "omicsclip_val_tuned": _f(results["omicsclip_val_tuned"]["per_protein"][j]),
                            "ridge_50pcs": _f(r_ridge[j]), "knn_50pcs": _f(r_knn[j])}
                        for j, p in enumerate(proteins)},
        "settings": {"default": defaults, "val_tuned": {k: best[k] for k in defaults},
                     "ridge_alpha": float(ridge.ridge_.alpha_), "knn": best_knn, "n_pcs": int(pca.n_components_)},
        "validation": {"omicsclip_grid": grid, "knn_grid": knn_val,
                       "omicsclip_default": default_val["val_mean_pearson"],
                       "omicsclip_best": best["val_mean_pearson"]},
        "label_transfer_accuracy": {n: r["label_transfer_accuracy"] for n, r in results.items()},
        "confidence_vs_abs_error_spearman": {n: r["confidence_vs_abs_error_spearman"] for n, r in results.items()},
        "partner_recall_at_10": recall,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    mp = out["mean_pearson"]
    out["beats_baselines"] = {n: bool(mp[n] > mp["ridge_50pcs"] and mp[n] > mp["knn_50pcs"])
                              for n in ("omicsclip_default", "omicsclip_val_tuned")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from omicsclip.io.jsonfile import write_json

    write_json(args.out, out)
    md = markdown(out)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    if tmp is not None:
        tmp.cleanup()


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def _epochs(model_dir: Path) -> int | None:
    log_file = Path(model_dir) / "train_log.jsonl"
    return sum(1 for _ in log_file.open()) if log_file.exists() else None


def markdown(out: dict) -> str:
    s = out["settings"]
    lines = [
        f"# Query quality: protein imputed from RNA ({out['dataset']})",
        "",
        f"Reference = {out['n_train']} training cells ({out['index']['factory']} index); queries = "
        f"{out['n_test']} held-out test cells given as RNA only. Pearson per protein across test cells of "
        f"imputed vs measured CLR protein. Baselines on {s['n_pcs']} PCs of the model's scaled highly variable "
        "genes, fitted on the "
        f"training cells (ridge alpha {s['ridge_alpha']:g}; kNN k={s['knn']['k']}, {s['knn']['weights']} "
        "weights, chosen on validation).",
        "",
        f"- omicsclip default: impute_k={s['default']['impute_k']}, temperature={s['default']['temperature']}, "
        f"transfer_from={s['default']['transfer_from']}",
        f"- omicsclip val-tuned (validation cells only): impute_k={s['val_tuned']['impute_k']}, "
        f"temperature={s['val_tuned']['temperature']}, transfer_from={s['val_tuned']['transfer_from']}",
        "",
        "| protein | omicsclip (default) | omicsclip (val-tuned) | ridge (50 PCs) | kNN (50 PCs) |",
        "|---|---|---|---|---|",
    ]
    for p, r in out["per_protein"].items():
        lines.append(f"| {p} | {_fmt(r['omicsclip_default'])} | {_fmt(r['omicsclip_val_tuned'])} | "
                     f"{_fmt(r['ridge_50pcs'])} | {_fmt(r['knn_50pcs'])} |")
    m = out["mean_pearson"]
    lines.append(f"| **mean** | **{m['omicsclip_default']:.4f}** | **{m['omicsclip_val_tuned']:.4f}** | "
                 f"**{m['ridge_50pcs']:.4f}** | **{m['knn_50pcs']:.4f}** |")
    rc = out["partner_recall_at_10"]
    lt = out["label_transfer_accuracy"]
    lines += [
        "",
        f"Beats both baselines: default {'yes' if out['beats_baselines']['omicsclip_default'] else '**no**'}, "
        f"val-tuned {'yes' if out['beats_baselines']['omicsclip_val_tuned'] else '**no**'}.",
        "",
        f"Recall@10 of the true partner, test cells added to the training index ({rc['reference_cells']} cells, "
        f"chance {rc['chance']:.4f}): RNA -> protein {rc['rna_to_prot']:.3f}, protein -> RNA "
        f"{rc['prot_to_rna']:.3f}.",
        "",
        f"Cell-type label transfer accuracy (test cells with a label that is not ignored, e.g. `unknown`): default "
        f"{lt['omicsclip_default']:.3f}, val-tuned {lt['omicsclip_val_tuned']:.3f}.",
        "",
    ]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()
