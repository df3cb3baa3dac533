"""totalVI peer of bench/transfer.py: runs inside the scvi-tools venv, never in the project's.

bench/transfer.py writes, per pair, ``input.h5ad`` (reference + query concatenated on the shared genes, HVG-
selected on the reference; ``obs["dataset"]`` = the batch; ``obsm["protein_expression"]`` = the reference's whole
panel, all zeros for the query cells) and ``truth.npz`` (the query's true shared-protein counts and labels, the
reference's labels), then runs::

    /tmp/scvi-venv/bin/python bench/transfer_totalvi.py ARGS.json

scvi-tools treats a protein that is zero in every cell of a batch as not measured in that batch
(``ProteinObsmField`` builds ``protein_batch_mask`` from that; ``TOTALVI`` then leaves those entries out of the
likelihood), so the query batch contributes RNA only. Training: fixed seed, ``max_epochs`` from the args, the KL
warm-up shortened to at most half of that budget (scvi's default, 0.75 x n_cells steps, assumes its 400-epoch
budget), scvi's defaults otherwise (90/10 train/validation split, early stopping, learning-rate schedule). The query's
protein is imputed as the reference batch (``get_normalized_expression(transform_batch=<reference>)``, 25
posterior samples, mean), scored as ``log1p`` re-centred over the shared proteins; labels are transferred by a
kNN classifier (k by CV on the reference) on the totalVI latent, fitted on the labelled reference cells.

Writes ``out`` (JSON): per-protein Pearson, mean, accuracy, seconds (training and total), epochs run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(args: dict) -> dict:
    """Train totalVI on the pair in ``args`` and return the scored result."""
    t_start = time.perf_counter()
    import anndata as ad
    import numpy as np
    import torch

    torch.set_num_threads(int(args["threads"]))
    import scvi
    from transfer_metrics import fit_knn_classifier, known_labels, label_accuracy, protein_pearson

    scvi.settings.seed = int(args["seed"])
    a = ad.read_h5ad(args["h5ad"])
    truth = np.load(args["truth"], allow_pickle=True)
    ref_batch, query_batch = args["ref_batch"], args["query_batch"]
    is_query = (a.obs["dataset"] == query_batch).to_numpy()
    scvi.model.TOTALVI.setup_anndata(a, protein_expression_obsm_key="protein_expression", batch_key="dataset")
    model = scvi.model.TOTALVI(a)
    mask = model.protein_state_registry.get("protein_batch_mask")
    steps_per_epoch = int(np.ceil(0.9 * a.n_obs / 256))  # scvi defaults: 90% training cells, batch size 256
    kl_steps = min(int(0.75 * a.n_obs), int(0.5 * int(args["max_epochs"]) * steps_per_epoch))
    t0 = time.perf_counter()
    model.train(max_epochs=int(args["max_epochs"]), n_steps_kl_warmup=kl_steps, accelerator="cpu", devices=1,
                enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    epochs_run = len(model.history["elbo_train"]) if "elbo_train" in model.history else None

    q_idx = np.flatnonzero(is_query)
    _, prot = model.get_normalized_expression(indices=q_idx, n_samples=25, return_mean=True,
                                              transform_batch=ref_batch, gene_list=[str(a.var_names[0])])
    proteins = [str(p) for p in truth["proteins"]]
    pred = np.log1p(prot[proteins].to_numpy(dtype=np.float64))
    result = {"protein": protein_pearson(pred, truth["query_protein"], proteins)}
    shared = [str(s) for s in truth["shared_labels"]]
    if shared:
        latent = model.get_latent_representation()
        ref_labels = truth["ref_labels"].astype(str)
        keep = known_labels(ref_labels)
        clf = fit_knn_classifier(latent[~is_query][keep], ref_labels[keep], int(args["seed"]))
        lab = label_accuracy(clf.predict(latent[is_query]), truth["query_labels"].astype(str), shared)
        lab["params"] = {"k": int(clf.n_neighbors)}
        result["labels"] = lab
    result.update({
        "train_seconds": train_s, "seconds": time.perf_counter() - t_start, "epochs_run": epochs_run,
        "max_epochs": int(args["max_epochs"]), "n_steps_kl_warmup": kl_steps, "threads": torch.get_num_threads(), "n_cells": int(a.n_obs),
        "n_genes": int(a.n_vars), "n_panel": int(a.obsm["protein_expression"].shape[1]),
        "query_protein_masked": None if mask is None else {k: bool(not np.any(v)) for k, v in mask.items()},
        "scvi_version": scvi.__version__,
    })
    return result


if __name__ == "__main__":
    arguments = json.loads(Path(sys.argv[1]).read_text())
    res = main(arguments)
    Path(arguments["out"]).write_text(json.dumps(res, indent=1))
    print("RESULT " + json.dumps({"mean_pearson": res["protein"]["mean_pearson"], "seconds": res["seconds"]}))
