"""``train_model``: split, fit preprocessing on training cells, train the dual encoder, write the model folder.

The run works in ``<out>.partial/`` (split, preprocessing state, ``checkpoints/``, ``train_log.jsonl``) so that an
interrupted run can be resumed; the folder is renamed to ``<out>`` only once the model is complete. Rank 0 holds
the output's lock (:func:`omicsclip.io.atomic.claim_output`) for the whole run, so a second run on the same output
is refused. A run that fails before its first checkpoint removes its ``.partial``; one left without a checkpoint
(a killed run) is removed by the next run instead of blocking it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path, check_writable, claim_output, replace_output
from omicsclip.io.jsonfile import read_json, write_json
from omicsclip.io.split import read_split, store_split, write_split
from omicsclip.model.batchops import model_inputs
from omicsclip.model.device import resolve_device
from omicsclip.model.encoders import build_model
from omicsclip.model.modelio import SPLIT, store_fingerprint, write_model_files
from omicsclip.model.preprocess import PreprocessState, TorchPreprocessor, fit_preprocessing
from omicsclip.train.checkpoint import LAST, load_checkpoint
from omicsclip.train.data import DeviceBatches, DeviceCells, StoreBatches, cell_bytes
from omicsclip.train.distributed import DistInfo, barrier, init_distributed, shutdown
from omicsclip.train.groups import batch_groups, validation_groups
from omicsclip.train.trainer import Trainer, TrainSettings

log = logging.getLogger(__name__)

PREPROCESS_STATE = "preprocess.json"
FIT_MAX_CELLS = 50_000  # preprocessing (HVG, scaling, PCs) is fitted on at most this many training cells (bench/scale.py)
VAL_MAX_CELLS = 10_000  # validation retrieval uses at most this many validation cells
_RUNTIME_KEYS = ("device", "num_threads", "data_on_device")  # may change between a run and its resume


def _check_train_cfg(train: dict[str, Any], world_size: int) -> None:
    t, lo, hi = train["temperature"], train["temperature_min"], train["temperature_max"]
    if not lo <= t <= hi:
        raise InputError(f"train.temperature={t} must lie within [temperature_min={lo}, temperature_max={hi}]")
    if train["batch_size"] % world_size:
        raise InputError(f"train.batch_size={train['batch_size']} must be divisible by the {world_size} processes")


def run_fingerprint(cfg: dict[str, Any], data_fingerprint: str) -> str:
    """Return what identifies a checkpoint's run: the config (without runtime-only keys) and the data.

    Parameters
    ----------
    cfg
        The full, validated config (sections ``split``, ``preprocess``, ``model``, ``train`` count).
    data_fingerprint
        The store's fingerprint (:func:`omicsclip.model.modelio.store_fingerprint`).

    Returns
    -------
    str
        A sha256 hex digest.
    """
    c = json.loads(json.dumps({k: cfg[k] for k in ("split", "preprocess", "model", "train")}))
    for k in _RUNTIME_KEYS:
        c["train"].pop(k, None)
    return hashlib.sha256(json.dumps([c, data_fingerprint], sort_keys=True).encode()).hexdigest()


def _prepare_dirs(out_dir: Path, store: Path, *, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    """Return (work dir, whether a checkpoint should be resumed). Rank 0 only, with the output's lock held."""
    work = out_dir.with_name(out_dir.name + ".partial")
    check_writable(out_dir, overwrite=overwrite or resume, inputs=(store,))  # before any training
    if work.exists():
        checkpoint = (work / "checkpoints" / LAST).exists()
        if resume and checkpoint:
            return work, True
        if checkpoint and not (resume or overwrite):
            raise InputError(f"{work}: an unfinished run is there; pass --resume to continue it or "
                             f"--overwrite to start over")
        if resume:  # no checkpoint: its split/preprocessing may be from other settings, so start over
            log.warning("no checkpoint in %s; starting a new run", work)
        elif not checkpoint:  # we hold the lock, so its run is over (killed before its first checkpoint)
            log.info("removing %s: an unfinished run without a checkpoint (nothing to resume)", work)
        shutil.rmtree(work)
    elif resume:
        log.warning("nothing to resume in %s; starting a new run", work)
    (work / "checkpoints").mkdir(parents=True, exist_ok=True)
    return work, False


def _promote(work: Path, out_dir: Path, store: Path, *, overwrite: bool) -> None:
    """Rename the finished work folder to ``out_dir`` (replacing an old one only with ``overwrite``)."""
    if out_dir.exists():
        check_writable(out_dir, overwrite=overwrite, inputs=(store,))
    replace_output(work, Path(os.path.abspath(out_dir)), overwrite=overwrite)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fit_state(store: Path, train_rows: np.ndarray, info: dict[str, Any], section: dict[str, Any],
               seed: int) -> PreprocessState:
    from omicsclip.io.genesets import resolve_genes
    from omicsclip.io.panels import dataset_order, panels_of, store_gene_masks
    from omicsclip.io.store import iter_store

    store_genes = [str(g) for g in info["genes"].index]
    masks = store_gene_masks(info)  # a store pooled on the union of several datasets' genes
    library_genes = resolve_genes(section["genes"], store_genes)
    panels = panels_of(info["uns"])
    rows = train_rows
    if rows.size > FIT_MAX_CELLS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, FIT_MAX_CELLS, replace=False))
        log.info("preprocess: fitting on %d of %d training cells", rows.size, train_rows.size)
    rna_parts, prot_parts, code_parts = [], [], []
    for rna, prot, sl in iter_store(store):
        sel = rows[(rows >= sl.start) & (rows < sl.stop)] - sl.start
        if sel.size:
            rna_parts.append(rna[sel])
            prot_parts.append(prot[sel])
            code_parts.append(None if masks is None else masks[0][sl.start + sel])
    rna = sp.vstack(rna_parts, format="csr")
    rna_parts.clear()  # the sample is held once from here on
    datasets = None
    if section["pca_within_datasets"] and panels is not None:  # each training cell's dataset
        from omicsclip.io.panels import dataset_codes

        datasets = dataset_codes(info["obs"].iloc[rows], panels)
    return fit_preprocessing(
        rna, np.concatenate(prot_parts), store_genes, [str(p) for p in info["proteins"].index],
        n_hvg=section["n_hvg"], target_sum=section["target_sum"], scale_rna=section["scale_rna"],
        max_value=section["max_value"], scale_prot=section["scale_prot"],
        max_missing_gene_fraction=section["max_missing_gene_fraction"],
        max_missing_protein_fraction=section["max_missing_protein_fraction"], n_pcs=section["n_pcs"],
        depth_features=section["depth_features"], protein_genes=section["protein_genes"],
        library_genes=library_genes, panels=None if panels is None else [panels[k] for k in sorted(panels)],
        gene_masks=None if masks is None else (np.concatenate(code_parts), masks[1]),
        dataset_codes=datasets, pca_within_datasets=section["pca_within_datasets"],
        datasets=dataset_order(info["uns"]),
    )


def _fits_on_device(bytes_needed: int, device: torch.device) -> bool:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return bytes_needed < 0.5 * free
    import psutil

    return bytes_needed < 0.5 * psutil.virtual_memory().available


def _training_source(store: Path, train_rows: np.ndarray, state: PreprocessState, info: dict[str, Any],
                     train: dict[str, Any], device: torch.device, dist: DistInfo):
    n = len(info["obs"])
    # upper bound: every non-zero of the training cells is a model gene
    est = int(cell_bytes(info["nnz_rna"] / max(n, 1), len(state.proteins)) * len(train_rows))
    mode = train["data_on_device"]
    on_device = mode is True or (mode == "auto" and _fits_on_device(est, device))
    groups = batch_groups(info, train_rows, train)
    if groups is not None and not on_device and train["batch_key"] == "auto":
        log.warning("train.batch_key=auto: batches mix datasets, as the training cells are streamed (about "
                    "%.1f GB do not fit on %s)", est / 1e9, device)
        groups = None
    if groups is not None and not on_device:
        raise InputError(f"train.batch_key={train['batch_key']!r} needs the training cells in memory, but about "
                         f"{est / 1e9:.1f} GB do not fit on {device} (train.data_on_device)")
    if on_device:
        cells = DeviceCells.from_store(store, train_rows, state, device)
        log.info("training data on %s: %d cells x %d genes (%d non-zeros, %.2f GB, %.0f bytes/cell)", device,
                 cells.n_cells, cells.n_genes, cells.values.numel(), cells.nbytes / 1e9,
                 cells.nbytes / max(cells.n_cells, 1))
        return DeviceBatches(cells, train["batch_size"], train["seed"], rank=dist.rank, world_size=dist.world_size,
                             groups=groups)
    log.info("training data streamed from %s (about %.1f GB would not fit on %s)", store, est / 1e9, device)
    return StoreBatches(store, train_rows, state, train["batch_size"], train["seed"], device, rank=dist.rank,
                        world_size=dist.world_size)


def _validation_rows(val_rows: np.ndarray, seed: int) -> np.ndarray:
    """Return the validation cells scored: all, or a fixed sample of ``VAL_MAX_CELLS``."""
    if val_rows.size > VAL_MAX_CELLS:
        return np.sort(np.random.default_rng(seed + 1).choice(val_rows, VAL_MAX_CELLS, replace=False))
    return val_rows


def _validation_inputs(store: Path, val_rows: np.ndarray, state: PreprocessState, pre: TorchPreprocessor,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    if val_rows.size < 2:
        return None
    cells = DeviceCells.from_store(store, val_rows, state, device)
    return model_inputs(cells.gather(torch.arange(cells.n_cells, device=device)), pre)


def prepare_training_store(stores: list[Path], out_dir: Path, cfg: dict[str, Any], *,
                           genes_from: list[Path] = (), resume: bool = False, overwrite: bool = False) -> Path:
    """Return the store to train on, pooling several stores first; resolve ``--genes-from`` into the config.

    Several stores are pooled (:func:`omicsclip.io.pool.pool_stores`) into ``<out_dir>.pool.zarr``; an existing
    pooled store of the same sources (the same paths, cells, feature names and ingest time) is reused, anything else
    there needs ``overwrite``.
    ``genes_from`` inputs set ``cfg["preprocess"]["genes"]`` to the genes the store shares with all of them (in
    place, so the model records the list).
    """
    from omicsclip.io.genesets import resolve_genes
    from omicsclip.io.pool import pool_stores
    from omicsclip.io.store import store_info

    if not stores:
        raise InputError("train: give a store")
    store = Path(stores[0])
    if len(stores) > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError("train: pool several stores first (omicsclip pool), then train on the pooled store "
                             "under torchrun")
        store = out_dir.with_name(out_dir.name + ".pool.zarr")
        if _same_pool(store, stores) and not overwrite:
            log.warning("reusing %s, pooled earlier from the same stores (--overwrite pools them again)", store)
        elif store.exists() and not overwrite:
            raise InputError(f"{store} exists but was pooled from other stores, or other versions of them; pass "
                             f"--overwrite to pool these again")
        else:
            pool_stores(stores, store, overwrite=overwrite)
    if genes_from:
        genes = [str(g) for g in store_info(store)["genes"].index]
        cfg["preprocess"]["genes"] = resolve_genes(cfg["preprocess"]["genes"], genes, genes_from)
    return store


def _same_pool(pooled: Path, stores: list[Path]) -> bool:
    """Whether ``pooled`` exists and was pooled from exactly ``stores``.

    The same paths and, per store, the same :func:`omicsclip.io.pool.source_identity` (cells, feature names,
    ingest time).
    """
    from omicsclip.io.pool import source_identity
    from omicsclip.io.store import store_info

    if not pooled.exists():
        return False
    try:
        sources = json.loads(str(store_info(pooled)["uns"]["pooled_from_json"]))
    except (InputError, KeyError, ValueError):
        return False
    paths = [str(Path(s).resolve()) for s in stores]
    if [src["path"] for src in sources] != paths:
        return False
    identities = [source_identity(store_info(s)) for s in stores]
    if any("features_sha256" not in src for src in sources):  # pooled by an omicsclip that recorded cells only
        log.warning("%s was pooled by an earlier omicsclip that recorded only its sources' paths and cell counts: "
                    "reused on those (--overwrite pools them again)", pooled)
        return all(src["n_cells"] == ident["n_cells"] for src, ident in zip(sources, identities, strict=True))
    return all(all(src.get(k) == v for k, v in ident.items()) for src, ident in zip(sources, identities, strict=True))


def train_model(store_path: str | Path, out_dir: str | Path, cfg: dict[str, Any], *, resume: bool = False,
                overwrite: bool = False) -> Path:
    """Train a dual encoder on a paired store and write the model folder.

    Parameters
    ----------
    store_path
        Paired zarr store (``omicsclip ingest``).
    out_dir
        Model folder to create: ``model.safetensors``, ``model.json``, ``split.tsv``, ``train_log.jsonl``,
        ``checkpoints/``.
    cfg
        Full, validated config (sections ``split``, ``preprocess``, ``model``, ``train`` are used).
    resume
        Continue the interrupted run in ``<out_dir>.partial`` from its last checkpoint (bit-for-bit the same
        result as an uninterrupted run on the same hardware and settings).
    overwrite
        Replace an existing ``out_dir`` / discard an unfinished run.

    Returns
    -------
    Path
        ``out_dir``.

    Notes
    -----
    Under ``torchrun`` every process trains on a shard of each global batch (DDP); rank 0 writes the files.
    """
    store, out_dir = Path(store_path), Path(out_dir)
    train = cfg["train"]
    # pinned now and re-applied before training: libraries imported on the way (numba through scanpy) may
    # change the OpenMP thread count, and CPU reductions (LayerNorm backward) depend on it
    threads = int(train["num_threads"]) or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = resolve_device(train["device"])
    dist = init_distributed(device)
    clean = False
    try:
        _check_train_cfg(train, dist.world_size)
        out = _train(store, out_dir, cfg, device, dist, threads, resume=resume, overwrite=overwrite)
        clean = True
        return out
    finally:
        shutdown(dist, clean=clean)


def _train(store: Path, out_dir: Path, cfg: dict[str, Any], device: torch.device, dist: DistInfo, threads: int,
           *, resume: bool, overwrite: bool) -> Path:
    from omicsclip.io.store import store_info

    t_start = time.time()
    info = store_info(store)
    cfg = _resolve_pooled_width(cfg, info)
    data_fp = store_fingerprint(store)
    run_fp = run_fingerprint(cfg, data_fp)
    work = out_dir.with_name(out_dir.name + ".partial")
    if resume and out_dir.exists() and not work.exists():
        log.info("%s is already complete; nothing to resume", out_dir)
        return out_dir
    with ExitStack() as held:
        fresh = False
        if dist.is_main:
            held.enter_context(claim_output(out_dir, overwrite=overwrite or resume, inputs=(store,)))
            work, do_resume = _prepare_dirs(out_dir, store, resume=resume, overwrite=overwrite)
            fresh = not do_resume
        try:
            return _run(store, out_dir, work, cfg, info, data_fp, run_fp, device, dist, threads,
                        fresh=fresh, resume=resume, overwrite=overwrite, t_start=t_start)
        except BaseException:
            if fresh and work.exists() and not (work / "checkpoints" / LAST).exists():
                shutil.rmtree(work, ignore_errors=True)  # failed before its first checkpoint: leave nothing
            raise


def _resolve_pooled_width(cfg: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with the pooled widths (``model.rna_hidden_pooled``, ``prot_hidden_pooled``) for a pooled store.

    Each applies where it is set, and only while ``model.rna_hidden`` (``prot_hidden``) is the shipped default:
    widths the user set are kept.

    The model saved with the run records the widths it was built with. Cells of several datasets are more diverse
    than one dataset's, and their protein encoder takes the union panel: on validation cells of pbmc10k + bremsc +
    5' PBMC pooled, a 256-wide RNA layer beat the 128-wide one of a single dataset on 3 of 3 splits
    (``bench/results/val_sweeps/pooled_size.jsonl``), and a 128-wide protein layer the 64-wide one
    (``pooled_within.jsonl``).
    """
    from omicsclip.config import default_config
    from omicsclip.io.panels import panels_of

    if panels_of(info["uns"]) is None:
        return cfg
    model, shipped = dict(cfg["model"]), default_config()["model"]
    for enc, name in (("rna", "RNA"), ("prot", "protein")):
        pooled_hidden = list(model.get(f"{enc}_hidden_pooled") or [])
        hidden = list(model[f"{enc}_hidden"])
        if not pooled_hidden or pooled_hidden == hidden:
            continue
        if hidden != list(shipped[f"{enc}_hidden"]):  # the user chose the widths: theirs win
            log.info("pooled store: %s encoder widths %s as set (model.%s_hidden_pooled %s applies only to the "
                     "default model.%s_hidden)", name, hidden, enc, pooled_hidden, enc)
            continue
        log.info("pooled store: %s encoder widths %s (model.%s_hidden_pooled) instead of %s", name, pooled_hidden,
                 enc, hidden)
        model[f"{enc}_hidden"] = pooled_hidden
    return {**cfg, "model": model}


def _run(store: Path, out_dir: Path, work: Path, cfg: dict[str, Any], info: dict[str, Any], data_fp: str,
         run_fp: str, device: torch.device, dist: DistInfo, threads: int, *, fresh: bool, resume: bool,
         overwrite: bool, t_start: float) -> Path:
    """Run the training in ``work`` and promote it (rank 0: ``fresh`` when ``work`` was just created)."""
    train = cfg["train"]
    if dist.is_main and fresh:  # a pooled store: each dataset split as its own store would be
        write_split(store_split(info["obs"], info["uns"], **cfg["split"]), work / SPLIT)
    barrier(dist)
    do_resume = (work / "checkpoints" / LAST).exists() and resume
    split = read_split(work / SPLIT)
    if not split.index.equals(pd.Index(info["obs"].index.astype(str))):
        raise InputError(f"{work / SPLIT}: barcodes differ from the store's; use --overwrite to start over")
    rows = {s: np.flatnonzero(split.to_numpy() == s) for s in ("train", "val", "test")}
    if len(rows["train"]) < train["batch_size"]:
        raise InputError(f"train.batch_size={train['batch_size']} is larger than the {len(rows['train'])} "
                         f"training cells; lower it")

    if dist.is_main and not (work / PREPROCESS_STATE).exists():
        state = _fit_state(store, rows["train"], info, cfg["preprocess"], train["seed"])
        with atomic_path(work / PREPROCESS_STATE, overwrite=True) as tmp:
            write_json(tmp, state.to_dict())
    barrier(dist)
    state = PreprocessState.from_dict(read_json(work / PREPROCESS_STATE))
    pre = TorchPreprocessor(state, device)
    torch.set_num_threads(threads)

    _seed_everything(train["seed"])
    precision = train["precision"]
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    model = build_model(pre.rna_dim, pre.prot_dim, cfg["model"], train).to(device)
    source = _training_source(store, rows["train"], state, info, train, device, dist)
    val_rows = _validation_rows(rows["val"], train["seed"])
    val = _validation_inputs(store, val_rows, state, pre, device)
    val_groups = None if val is None else validation_groups(info, val_rows, train, device)  # val_rows: sorted,
    if val_groups is not None and dist.is_main:  # as the cells DeviceCells.from_store loads
        log.info("validation: partners ranked within each group (%s)",
                 ", ".join(f"{k} {v.numel()}" for k, v in val_groups.items()))
    trainer = Trainer(model, source, pre, val, TrainSettings.from_config(train, bf16=bf16), device, dist, work,
                      run_fp, val_groups=val_groups)
    if do_resume:
        trainer.load_state_dict(load_checkpoint(work / "checkpoints" / LAST, model))
    summary = trainer.fit()

    if dist.is_main:
        extra = {
            "data_fingerprint": data_fp, "store": str(store.resolve()),
            "n_cells": {k: int(v.size) for k, v in rows.items()},
            "training": {**summary, "seconds": round(time.time() - t_start, 1), "device": str(device),
                         "world_size": dist.world_size, "bf16": bf16},
        }
        fp = write_model_files(work, model, state, cfg, extra)
        _promote(work, out_dir, store, overwrite=overwrite or resume)
        log.info("wrote %s (model %s..., best epoch %d of %d)", out_dir, fp[:12], summary["best_epoch"],
                 summary["epochs"])
    barrier(dist)
    return out_dir
