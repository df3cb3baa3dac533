"""Degraded protein panels (issue #12 case 8): neighbours and few-label heads vs proteins missing from the query.

On synthetic CITE-seq data (``omicsclip.io.synthetic``, 10 proteins, 6 cell types): train a small model
(``omicsclip.train.run.train_model``), embed every cell with its full panel, fit the ``gated`` and
``uncertainty`` heads on labelled TRAINING cells, then re-embed the held-out TEST cells' protein with 0, 3, 4, 5 and 7
of the 10 proteins removed from the panel (``draws`` random panels each; also 4 and 5). Reported per number missing:

- top-1 cell-type agreement of each test cell's nearest TRAINING cell, protein query -> protein and -> RNA
  embeddings (exact cosine search);
- each head's accuracy and mean protein weight on the test cells (RNA complete, protein degraded): ``old`` = the
  hard presence mask (what the heads did before: a degraded panel counts as fully present), ``new`` = the protein
  column weighted by 1 - fraction missing (:func:`omicsclip.heads.inputs.reliability_mask`); same heads, same
  seeds, so the difference is the weighting alone.

The model's ``max_missing_protein_fraction`` (default 0.4) refuses 5 and 7 of 10 missing; the limit is lifted on the
loaded model here to measure past it (``refused_by_default`` says which rows the default refuses).

    .venv/bin/python bench/degraded_panel.py [--threads 1] [--draws 3] [--seed 0]

Prints a table and writes ``bench/results/degraded_panel.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
MISSING = (0, 3, 4, 5, 7)
FUSIONS = ("gated", "uncertainty")

log = logging.getLogger("degraded_panel")


def top1_agreement(query: np.ndarray, ref: np.ndarray, q_types: np.ndarray, ref_types: np.ndarray) -> float:
    """Fraction of queries whose most similar reference row (cosine; rows are unit) has the same cell type."""
    return float((ref_types[(query @ ref.T).argmax(1)] == q_types).mean())


def run(threads: int, draws: int, seed: int, labels_per_class: int) -> dict:
    """Train, embed, fit the heads and measure (see the module docstring); return the results."""
    import torch

    from omicsclip.config import load_config
    from omicsclip.heads.fit import HeadParams, fit_head
    from omicsclip.heads.inputs import presence_mask, reliability_mask
    from omicsclip.heads.labels import sample_per_class
    from omicsclip.heads.predict import predict_head
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.alignment import protein_missing_fraction
    from omicsclip.model.modelio import load_model
    from omicsclip.train.run import train_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    data = make_synthetic(n_cells=2000, n_genes=300, n_proteins=10, n_types=6, seed=seed)
    cfg = load_config(None, ["preprocess.n_hvg=200", "model.rna_hidden=[64]", "model.prot_hidden=[32]",
                             "model.embed_dim=16", "train.batch_size=128", "train.epochs=30", "train.lr=0.003",
                             "train.warmup_steps=10", f"train.num_threads={threads}", "train.device=cpu",
                             f"train.seed={seed}", f"split.seed={seed}"])
    with tempfile.TemporaryDirectory(prefix="omicsclip-degraded-") as tmp:
        store = write_store(data, Path(tmp) / "store.zarr")
        train_model(store, Path(tmp) / "model", cfg)
        model = load_model(Path(tmp) / "model")
    default_limit = model.state.max_missing_protein_fraction
    model.state.max_missing_protein_fraction = 1.0  # measure past the limit (the default refuses those rows)
    split = model.split.reindex(data.barcodes).to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    types = data.obs["cell_type"].astype(str).to_numpy()
    full = model.embed(data.rna, data.prot, genes=data.gene_names, proteins=data.protein_names)
    classes = sorted(set(types[train]))
    y_all = np.array([classes.index(t) for t in types])
    rng = np.random.default_rng(seed)
    idx = sample_per_class(types, np.isin(np.arange(len(types)), train), labels_per_class, rng)
    pool = np.setdiff1d(train, idx)
    params = {f: HeadParams.from_section({**cfg["finetune"], "fusion": f, "seed": seed}) for f in FUSIONS}
    heads = {f: fit_head(full["rna"][idx], full["prot"][idx], y_all[idx], len(classes), p,
                         unlabelled=(full["rna"][pool], full["prot"][pool])) for f, p in params.items()}
    log.info("model and heads ready in %.0fs", time.perf_counter() - t0)
    z_rna = full["rna"][test]
    rows = []
    for n_missing in MISSING:
        acc = {f"{f}_{v}": [] for f in FUSIONS for v in ("old", "new")}
        wts = {f"{f}_{v}": [] for f in FUSIONS for v in ("old", "new")}
        agree_pp, agree_pr = [], []
        for d in range(draws if n_missing else 1):
            keep = np.sort(np.random.default_rng([seed, n_missing, d]).permutation(10)[n_missing:])
            z_prot = model.embed(prot=data.prot[test][:, keep],
                                 proteins=[data.protein_names[i] for i in keep])["prot"]
            frac = protein_missing_fraction(model.last_report["prot"], len(test))
            agree_pp.append(top1_agreement(z_prot, full["prot"][train], types[test], types[train]))
            agree_pr.append(top1_agreement(z_prot, full["rna"][train], types[test], types[train]))
            hard = presence_mask(z_rna, z_prot)
            for f, head in heads.items():
                for v, mask in (("old", hard), ("new", reliability_mask(hard, frac))):
                    pred = predict_head(head, z_rna, z_prot, mask=mask, mc_samples=params[f].mc_samples, seed=seed)
                    acc[f"{f}_{v}"].append(float((pred["probs"].argmax(1) == y_all[test]).mean()))
                    wts[f"{f}_{v}"].append(float(pred["weights"][:, 1].mean()))
        row = {"n_missing": n_missing, "missing_fraction": n_missing / 10,
               "refused_by_default": n_missing / 10 > default_limit,
               "top1_agreement_prot_to_prot": round(float(np.mean(agree_pp)), 4),
               "top1_agreement_prot_to_rna": round(float(np.mean(agree_pr)), 4)}
        for key in acc:
            row[f"accuracy_{key}"] = round(float(np.mean(acc[key])), 4)
            row[f"prot_weight_{key}"] = round(float(np.mean(wts[key])), 4)
        rows.append(row)
        log.info("%s", row)
    rna_only = {f: float((predict_head(h, z_rna, None, mc_samples=params[f].mc_samples, seed=seed)["probs"].argmax(1)
                          == y_all[test]).mean()) for f, h in heads.items()}
    return {"setup": {"n_cells": data.n_cells, "n_proteins": 10, "n_types": 6, "n_train": int(train.size),
                      "n_test": int(test.size), "labels_per_class": labels_per_class, "draws": draws, "seed": seed,
                      "default_max_missing_protein_fraction": default_limit},
            "rna_only_accuracy": {f: round(a, 4) for f, a in rna_only.items()},
            "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--draws", type=int, default=3, help="random panels per number of missing proteins")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels-per-class", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS / "degraded_panel.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("omicsclip.model.alignment").setLevel(logging.ERROR)
    res = run(args.threads, args.draws, args.seed, args.labels_per_class)
    cols = ["n_missing", "top1_agreement_prot_to_prot", "top1_agreement_prot_to_rna",
            *[f"{m}_{f}_{v}" for f in FUSIONS for m in ("accuracy", "prot_weight") for v in ("old", "new")]]
    print("\t".join(c.replace("top1_agreement_", "top1_") for c in cols))
    for row in res["rows"]:
        print("\t".join(str(row[c]) for c in cols))
    print("RNA-only accuracy:", res["rna_only_accuracy"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
