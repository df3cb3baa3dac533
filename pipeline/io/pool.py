"""Pool paired stores from several datasets (labs, chemistries, antibody panels) into one store.

The pooled store holds the *union* of the protein panels and, by default, the union of the datasets' genes
(``genes="shared"``: their intersection; or a given list every store has). Counts outside a cell's own panel are
stored as 0 and recorded as unmeasured (:mod:`omicsclip.io.panels`: obs column ``dataset``, ``uns["panels"]`` and
``uns["gene_panels"]``), so training, embedding, indexing and evaluation leave them out instead of reading them as
zero counts. The union keeps every dataset's own genes: a reference pooled from a 33k-gene dataset and two
datasets filtered to a few thousand genes each (sharing a few hundred) still learns each from all its genes. Barcodes become
``<barcode>-<dataset>`` (AnnData's ``concat(index_unique="-")``), so cells of different datasets never collide.

Everything else downstream (split, train, embed, index, query, finetune, evaluate) takes the pooled store like any
other; ``train.batch_key: dataset`` draws each training batch within one dataset.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.errors import InputError
from omicsclip.io.atomic import check_writable
from omicsclip.io.gene_names import mismatch_hint
from omicsclip.io.panels import DATASET_COLUMN, GENE_PANELS_KEY, PANELS_KEY, panels_of
from omicsclip.io.store import StoreWriter, iter_store, store_info

log = logging.getLogger(__name__)


def dataset_names(stores: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """Return one name per store: ``names`` if given, else each store's folder name without ``.zarr``.

    Stores all named ``store.zarr`` (the workflow's layout: ``<results>/<dataset>/store.zarr``) take their parent
    folder's name.
    """
    paths = [Path(s) for s in stores]
    if names is not None:
        out = [str(n) for n in names]
        if len(out) != len(paths):
            raise InputError(f"pool: {len(out)} dataset names for {len(paths)} stores")
    else:
        out = [p.name.removesuffix(".zarr") for p in paths]
        if len(set(out)) < len(out):
            out = [p.resolve().parent.name for p in paths]
    if len(set(out)) < len(out) or any(not n or "/" in n for n in out):
        raise InputError(f"pool: dataset names must be unique and non-empty ({', '.join(out)}); name them with "
                         "`omicsclip pool --names a,b,...` (or give the stores folders of different names)")
    return out


def _pooled_obs(infos: list[dict], names: list[str]) -> pd.DataFrame:
    frames = []
    for info, name in zip(infos, names, strict=True):
        obs = info["obs"].copy()
        obs.index = obs.index.astype(str) + "-" + name
        obs[DATASET_COLUMN] = name
        frames.append(obs)
    obs = pd.concat(frames, axis=0, join="outer")
    for col in obs.columns:  # a column some datasets lack: categorical with NaN there, never the string "nan"
        if obs[col].dtype == object or isinstance(obs[col].dtype, pd.CategoricalDtype):
            obs[col] = pd.Categorical(obs[col].astype(object).where(obs[col].notna(), None))
    return obs


GENE_MODES = ("union", "shared")


def _pooled_genes(gene_lists: list[list[str]], genes: Sequence[str] | str) -> list[str]:
    """Return the pooled store's genes: ``union`` / ``shared`` (in first-seen order) or a list every store has."""
    shared = set(gene_lists[0]).intersection(*gene_lists[1:])
    if isinstance(genes, str):
        if genes not in GENE_MODES:
            raise InputError(f"pool: genes must be one of {', '.join(GENE_MODES)} or a gene list (got {genes!r})")
        if genes == "union":
            return list(dict.fromkeys(g for gl in gene_lists for g in gl))
        return [g for g in gene_lists[0] if g in shared]
    lacking = [g for g in genes if str(g) not in shared]
    if lacking:
        raise InputError(f"pool: {len(lacking)} of the given genes are not in every store "
                         f"(e.g. {', '.join(map(str, lacking[:3]))})")
    return list(dict.fromkeys(str(g) for g in genes))  # a gene listed twice is kept once


def source_identity(info: dict[str, Any]) -> dict[str, Any]:
    """Return what identifies a source store's version in ``uns["pooled_from"]``.

    Its cell and feature counts, a digest of its gene and protein names and when it was written
    (``uns["provenance"]["created"]``, "" when not recorded), so that a store ingested again (other aliases, other
    genes) is told from the one that was pooled.
    """
    genes, proteins = [str(g) for g in info["genes"].index], [str(p) for p in info["proteins"].index]
    digest = hashlib.sha256("\n".join([*genes, "\0", *proteins]).encode()).hexdigest()[:16]
    prov = info["uns"].get("provenance")
    created = str(prov.get("created", "")) if isinstance(prov, dict) else ""
    return {"n_cells": len(info["obs"]), "n_genes": len(genes), "n_proteins": len(proteins),
            "features_sha256": digest, "created": created}


def _copy_key(info: dict[str, Any]) -> tuple | None:
    """Return what a copy of a store shares with it: barcodes, feature names, stored counts and ingest time.

    ``None`` without a recorded ingest time. A store cut from another keeps its ingest time, but not its barcodes.
    """
    ident = source_identity(info)
    if not ident["created"]:
        return None
    cells = hashlib.sha256("\n".join(info["obs"].index.astype(str)).encode()).hexdigest()
    return tuple(ident.items()), info.get("nnz_rna"), info.get("nnz_prot"), cells


def _check_distinct(stores: Sequence[str | Path], infos: Sequence[dict]) -> None:
    """Refuse one store given twice: the same folder (a link included) or a copy of it (:func:`_copy_key`).

    Its cells would be pooled twice and could land in training and test.
    """
    paths, copies = [Path(s).resolve() for s in stores], [_copy_key(info) for info in infos]
    for i in range(len(stores)):
        for j in range(i):
            if paths[i] == paths[j] or (copies[i] is not None and copies[i] == copies[j]):
                what = ("the same store" if paths[i] == paths[j]
                        else "copies of one store (the same barcodes, features and counts)")
                raise InputError(f"pool: {stores[j]} and {stores[i]} are {what}; give each dataset once")


def pool_stores(stores: Sequence[str | Path], out: str | Path, *, names: Sequence[str] | None = None,
                genes: Sequence[str] | str = "union", overwrite: bool = False, chunk_cells: int = 10_000) -> Path:
    """Write one store holding the cells of several paired stores.

    Parameters
    ----------
    stores
        Two or more paired stores (``omicsclip ingest``), protein names harmonised by ingest.
    out
        The pooled store to create.
    names
        Dataset names (obs ``dataset``, barcode suffix); default from the store paths (:func:`dataset_names`).
    genes
        ``union`` (default): every gene of any store, each cell's unmeasured genes recorded as such;
        ``shared``: the genes all stores share; or a list of genes to keep (e.g. those shared with the datasets
        you will query), which must be in every store.
    overwrite
        Replace an existing ``out``.
    chunk_cells
        Cells copied at a time (bounded memory).

    Returns
    -------
    Path
        ``out``.
    """
    if len(stores) < 2:
        raise InputError("pool: give two or more stores")
    check_writable(Path(out), overwrite=overwrite, inputs=stores)  # never replace a store being pooled
    infos = [store_info(s) for s in stores]
    _check_distinct(stores, infos)  # before the names, which one store given twice would make clash
    names = dataset_names(stores, names)
    for s, info in zip(stores, infos, strict=True):
        if panels_of(info["uns"]) is not None:
            raise InputError(f"{s}: is already a pooled store; pool its source stores instead")
        if DATASET_COLUMN in info["obs"].columns:
            raise InputError(f"{s}: obs already has a {DATASET_COLUMN!r} column; rename it before pooling")
    gene_lists = [[str(g) for g in info["genes"].index] for info in infos]
    keep = _pooled_genes(gene_lists, genes)
    hints = {i: mismatch_hint(gene_lists[0], gl) for i, gl in enumerate(gene_lists[1:], 1)}
    if not keep:
        raise InputError("pool: the stores share no gene" + next((h for h in hints.values() if h), ""))
    for i, hint in hints.items():
        if hint:  # a union of two species' (or ID and symbol) gene names pools cells that share nothing
            log.warning("pool: %s and %s share %d genes%s", names[0], names[i],
                        len(set(gene_lists[0]) & set(gene_lists[i])), hint)
    keep_set = set(keep)
    gene_panels = {n: [g for g in gl if g in keep_set] for n, gl in zip(names, gene_lists, strict=True)}
    if all(len(p) == len(keep) for p in gene_panels.values()):
        gene_panels = None  # every dataset measured every kept gene
    proteins = list(dict.fromkeys(str(p) for info in infos for p in info["proteins"].index))
    panels = {n: [str(p) for p in info["proteins"].index] for n, info in zip(names, infos, strict=True)}
    obs = _pooled_obs(infos, names)
    for name, gl in zip(names, gene_lists, strict=True):
        log.info("pool: %s: %d cells, %d of its %d genes kept, %d proteins", name,
                 int((obs[DATASET_COLUMN] == name).sum()),
                 len(keep) if gene_panels is None else len(gene_panels[name]), len(gl), len(panels[name]))
    log.info("pool: %d cells, %d genes (%s), %d proteins in the union panel", len(obs), len(keep),
             genes if isinstance(genes, str) else "given list", len(proteins))
    prot_index, gene_index = pd.Index(proteins), pd.Index(keep)
    with StoreWriter(out, genes=pd.DataFrame(index=pd.Index(keep)), proteins=pd.DataFrame(index=prot_index),
                     overwrite=overwrite, inputs=stores) as w:
        offset = 0
        for store, gl, info in zip(stores, gene_lists, infos, strict=True):
            gpos = gene_index.get_indexer(gl)  # store gene -> pooled column (-1: not kept)
            have = np.flatnonzero(gpos >= 0)
            to_pooled = sp.csr_matrix((np.ones(have.size, np.float32), (have, gpos[have])), shape=(len(gl), len(keep)))
            ppos = prot_index.get_indexer([str(p) for p in info["proteins"].index])
            for rna, prot, sl in iter_store(store, chunk_cells):
                p = np.zeros((prot.shape[0], len(proteins)), np.float32)
                p[:, ppos] = prot
                x = sp.csr_matrix(rna @ to_pooled)
                x.sort_indices()
                w.append(x, p, obs.iloc[offset + sl.start : offset + sl.stop])
            offset += len(info["obs"])
        sources = [{"name": n, "path": str(Path(s).resolve()), **source_identity(i)}
                   for n, s, i in zip(names, stores, infos, strict=True)]
        uns = {PANELS_KEY: panels, "pooled_from": sources}
        if gene_panels is not None:
            uns[GENE_PANELS_KEY] = gene_panels
        return w.close(uns=uns)
