"""The ``finetune`` command: fit a head on the labelled training cells of an embeddings file and save it.

:func:`fit_embedding_head` fits in memory (the notebook API stops there); :func:`finetune_embedding` also saves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omicsclip.errors import InputError
from omicsclip.heads.base import FusionHead
from omicsclip.heads.calibration import classification_metrics
from omicsclip.heads.fit import HeadParams, fit_head
from omicsclip.heads.headio import save_head
from omicsclip.heads.inputs import read_embedding
from omicsclip.heads.labels import cap_cells, label_array, sample_per_class, unlabelled_pool
from omicsclip.heads.predict import predict_head
from omicsclip.heads.tuning import fit_with_store
from omicsclip.io.jsonfile import read_json_object
from omicsclip.model.embed import Embeddings, open_embeddings

log = logging.getLogger(__name__)

MAX_TEST_CELLS = 50_000  # held-out head metrics on at most this many test cells (a seeded sample)


def fit_embedding_head(
    emb_path: str | Path | Embeddings,
    *,
    label_key: str,
    section: dict[str, Any],
    labels_per_class: int | None = None,
    ignore_labels: tuple[str, ...] | list[str] = (),
    seed: int | None = None,
    store: str | Path | None = None,
    model: str | Path | None = None,
) -> tuple[FusionHead, dict[str, Any], dict[str, torch.Tensor]]:
    """Fit a head on an embedding's labelled training cells, in memory (what ``finetune`` saves).

    Labels come from ``obs[label_key]`` (NaN/empty/``ignore_labels`` = unlabelled). Cells of the ``train`` split
    are used (all cells when the file has no ``split`` column); ``labels_per_class`` draws that many per class
    (seeded). Unlabelled training cells serve the gated/uncertainty heads' label-free losses. Labelled
    ``test``-split cells, when present, give accuracy, macro-F1 and ECE in ``metrics``.

    Parameters
    ----------
    emb_path
        Embedding AnnData zarr from ``omicsclip embed``, or embeddings already opened or held in memory (an
        :class:`~omicsclip.model.embed.Embeddings`, named by its ``path`` in messages and ``head.json``).
    label_key
        obs column holding the labels.
    section
        The validated ``finetune:`` config section (:meth:`HeadParams.from_section`).
    labels_per_class
        Sample this many labelled training cells per class instead of using all.
    ignore_labels
        Label values treated as unlabelled (e.g. ``unknown``).
    seed
        Seed of the label draw and the head (default: ``section["seed"]``).
    store, model
        Paired store and model folder; needed only with ``finetune_encoder: true`` (light fine-tuning of the
        encoders' last layers, kept with the head and applied by ``predict``).

    Returns
    -------
    tuple
        The fitted head, its ``head.json`` description (classes, parameters, held-out metrics, model
        fingerprint) and the fine-tuned encoder tensors (empty unless ``finetune_encoder``), as
        :func:`omicsclip.heads.headio.save_head` takes them.
    """
    params = HeadParams.from_section(section)
    if seed is not None:
        params = replace(params, seed=int(seed))
    opened = emb_path if isinstance(emb_path, Embeddings) else open_embeddings(emb_path)
    opened.require("rna", "prot")
    emb_path = opened.path
    prot_missing = opened.prot_missing_fraction()
    degraded = prot_missing > 0
    if degraded.any():
        log.info("%d cells' protein panel lacks some of the model's proteins (up to %.0f%%): their protein "
                 "embedding weighs 1 - the fraction missing", int(degraded.sum()), 100 * float(prot_missing.max()))
    labels = label_array(opened.obs, label_key, ignore_labels, source=str(emb_path))
    split = opened.obs["split"].astype(str).to_numpy() if "split" in opened.obs.columns else None
    has_split = split is not None
    if split is not None and not (split == "train").any():  # e.g. cells of another store ("unseen")
        log.warning("%s: no 'train' cells in obs['split']; fitting on all labelled cells, no held-out metrics",
                    emb_path)
        split = None
    fit_cells = (split == "train") if split is not None else np.ones(len(labels), bool)
    if not has_split:
        log.warning("%s: no 'split' column; fitting on all labelled cells, no held-out metrics", emb_path)
    has_label = np.array([lab is not None for lab in labels])
    if labels_per_class is not None:
        if labels_per_class < 1:
            raise InputError(f"--labels-per-class must be >= 1, got {labels_per_class}")
        idx = sample_per_class(labels, fit_cells, labels_per_class, np.random.default_rng(params.seed))
    else:
        idx = np.flatnonzero(fit_cells & has_label)
    idx = cap_cells(idx, labels, section["max_cells"], np.random.default_rng([params.seed, 1]))
    if len(idx) == 0:
        raise InputError(f"{emb_path}: no labelled training cells in obs[{label_key!r}]")
    classes = sorted({labels[i] for i in idx})
    if len(classes) < 2:
        raise InputError(f"{emb_path}: obs[{label_key!r}] has fewer than 2 classes among training cells")
    cls_index = {c: i for i, c in enumerate(classes)}
    y = np.array([cls_index[labels[i]] for i in idx])
    test = np.zeros(0, np.int64)
    if split is not None:
        test = np.flatnonzero((split == "test") & np.array([lab in cls_index for lab in labels]))
        if len(test) > MAX_TEST_CELLS:  # held-out metrics on a seeded sample: their cost stays flat on an atlas
            test = np.sort(np.random.default_rng([params.seed, 2]).choice(test, MAX_TEST_CELLS, replace=False))
    pool = unlabelled_pool(split, len(labels), params.seed)
    test_cells = test
    if params.finetune_encoder:
        emb = read_embedding(opened)
    else:  # only the cells the head sees or is scored on are read (an atlas's embeddings need not fit)
        rows = np.unique(np.concatenate([idx, pool, test]).astype(np.int64))
        emb = read_embedding(opened, rows)
        idx, pool, test = (np.searchsorted(rows, a) for a in (idx, pool, test))
    log.info("fitting %s head (%s) on %d cells, %d classes%s", params.fusion, params.head, len(idx), len(classes),
             " + last encoder layers" if params.finetune_encoder else "")
    extra: dict[str, torch.Tensor] = {}
    if params.finetune_encoder:
        head, extra, test_emb = fit_with_store(store, model, emb, idx, y, len(classes), params, test, pool)
        z_test = (test_emb["rna"], test_emb["prot"])
    else:
        if store is not None or model is not None:
            log.warning("--store/--model are only used with finetune.finetune_encoder=true; ignored")
        head = fit_head(emb.z_rna[idx], emb.z_prot[idx], y, len(classes), params, mask=emb.mask[idx],
                        unlabelled=(emb.z_rna[pool], emb.z_prot[pool]), unlabelled_mask=emb.mask[pool],
                        progress=True)
        z_test = (emb.z_rna[test], emb.z_prot[test])
    metrics: dict[str, Any] = {}
    if len(test):
        pred = predict_head(head, *z_test, mask=emb.mask[test], mc_samples=params.mc_samples, seed=params.seed)
        y_test = np.array([cls_index[labels[i]] for i in test_cells])
        metrics = {"split": "test", **classification_metrics(pred["probs"], y_test)}
        log.info("test cells: accuracy %.3f, macro-F1 %.3f, ECE %.3f", metrics["accuracy"], metrics["macro_f1"],
                 metrics["ece"])
    from omicsclip import __version__

    meta = {
        "params": asdict(params),
        "classes": classes,
        "label_key": label_key,
        "ignore_labels": list(ignore_labels),
        "labels_per_class": labels_per_class,
        "n_train_cells": int(len(idx)),
        "n_unlabelled_cells": int(len(pool)) if head.uses_unlabelled else 0,
        "class_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        "model_fingerprint": emb.fingerprint,
        "embedding": str(emb_path),
        "encoder_finetuned": bool(params.finetune_encoder),
        "metrics": metrics,
        "omicsclip_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if emb.fingerprint is None:
        log.warning("%s: no uns['omicsclip']['model_fingerprint']; `predict` will refuse this head", emb_path)
    return head, meta, extra


def finetune_embedding(
    emb_path: str | Path | Embeddings,
    out: str | Path,
    *,
    label_key: str,
    section: dict[str, Any],
    labels_per_class: int | None = None,
    ignore_labels: tuple[str, ...] | list[str] = (),
    seed: int | None = None,
    store: str | Path | None = None,
    model: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit a head with :func:`fit_embedding_head` and save it (the ``finetune`` command).

    Parameters
    ----------
    emb_path, label_key, section, labels_per_class, ignore_labels, seed, store, model
        As for :func:`fit_embedding_head`.
    out
        New head folder (``head.safetensors``, ``head.json``); checked before any work is done.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    dict
        The saved ``head.json`` contents.
    """
    from omicsclip.io.atomic import check_writable

    source = emb_path.path if isinstance(emb_path, Embeddings) else emb_path
    check_writable(Path(out), overwrite=overwrite, inputs=(source, store, model))
    head, meta, extra = fit_embedding_head(emb_path, label_key=label_key, section=section,
                                           labels_per_class=labels_per_class, ignore_labels=ignore_labels,
                                           seed=seed, store=store, model=model)
    save_head(out, head, meta, extra_tensors=extra, overwrite=overwrite)
    log.info("wrote %s", out)
    return read_json_object(Path(out) / "head.json")
