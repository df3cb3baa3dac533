"""Build a reference index folder from ``omicsclip embed`` output (what ``omicsclip index`` runs)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.conventions import EMBEDDING_KEYS, MODALITIES
from omicsclip.errors import InputError
from omicsclip.index.protein_sources import apply_protein_sources
from omicsclip.index.reference import write_index_dir
from omicsclip.index.refprotein import reference_protein
from omicsclip.io.atomic import check_writable, temp_sibling
from omicsclip.io.panels import DATASET_COLUMN

log = logging.getLogger(__name__)


def index_embeddings(emb_path: str | Path, out_dir: str | Path, section: Mapping[str, Any], *,
                     store: str | Path | None = None, model_dir: str | Path | None = None,
                     overwrite: bool = False, ignore_labels: Sequence[str] | None = None) -> Path:
    """Build the reference folder from ``omicsclip embed`` output.

    Parameters
    ----------
    emb_path
        Embeddings AnnData zarr (obsm ``X_omicsclip_rna`` / ``X_omicsclip_prot``, ``uns["omicsclip"]``).
    out_dir
        Index folder to create.
    section
        The ``index:`` config section (kind and parameters, ``splits`` to restrict the reference,
        ``label_key``).
    store
        Paired store (or any input) with the reference cells' protein counts; default: the store recorded in
        the embeddings. Without one, the index cannot impute protein.
    model_dir
        Model folder whose protein panel defines the stored CLR protein; default: recorded in the embeddings.
    overwrite
        Replace an existing folder.
    ignore_labels
        Label values that mean "no label" for the pooled-reference source check (:mod:`omicsclip.index.protein_sources`);
        default: the shipped config's ``evaluate.ignore_labels``.
    """
    from omicsclip.model.embed import open_embeddings

    emb_path = Path(emb_path)
    emb = open_embeddings(emb_path)  # obs and uns only: cheap
    obs = emb.obs
    recorded = emb.uns.get("omicsclip")
    info = dict(recorded) if isinstance(recorded, Mapping) else {}
    explicit_model, explicit_store = model_dir is not None, store is not None
    model_dir, store = model_dir or info.get("model_dir"), store or info.get("store")
    # before the work, and with the recorded store and model too: replacing out_dir must not delete them
    check_writable(Path(out_dir), overwrite=overwrite, inputs=(emb_path, store, model_dir))
    fingerprint = emb.fingerprint
    if not fingerprint:
        raise InputError(f"{emb_path}: no uns['omicsclip']['model_fingerprint'] (not written by omicsclip embed)")
    present = [m for m in MODALITIES if m in emb.modalities]
    if not present:
        raise InputError(f"{emb_path}: no obsm {' or '.join(EMBEDDING_KEYS[m] for m in MODALITIES)}")
    keep = np.ones(len(obs), bool)
    splits = [str(s) for s in section["splits"]]
    if splits:
        if "split" not in obs.columns:
            raise InputError(f"{emb_path}: index.splits={splits} but obs has no 'split' column")
        keep = obs["split"].astype(str).isin(splits).to_numpy()
        log.info("reference: %d of %d cells in splits %s", int(keep.sum()), len(obs), splits)
    if not keep.any():
        raise InputError(f"{emb_path}: no cells to index (index.splits={splits})")
    ids, rows = pd.Index(obs.index)[keep], None if keep.all() else np.flatnonzero(keep)
    embeddings = emb.lazy(present, rows)
    model_proteins = None
    if model_dir is not None and not explicit_model and not Path(model_dir).exists():
        log.warning("%s (recorded in %s) is gone: the reference protein keeps the store's whole panel, not "
                    "necessarily the model's (pass --model)", model_dir, emb_path)
    elif model_dir is not None:  # read_meta refuses a missing folder given explicitly
        from omicsclip.model.modelio import read_meta

        meta = read_meta(model_dir)
        if meta["model_fingerprint"] != fingerprint:
            raise InputError(f"{model_dir}: model {meta['model_fingerprint'][:16]} did not produce {emb_path} "
                             f"(embedded with {str(fingerprint)[:16]})")
        model_proteins = meta["preprocessing"]["proteins"]
    label_key = str(section["label_key"] or "")
    has_labels = bool(label_key) and label_key in obs.columns
    labels = pd.DataFrame({label_key: obs[label_key].astype(str).to_numpy()[keep]}) if has_labels else None
    protein, protein_names, spilled, sourcing = None, None, temp_sibling(out_dir), None  # the protein waits on disk (mmap)
    try:  # the spilled protein is removed whatever happens, also while it is being computed
        if store is not None and Path(store).exists():
            protein, protein_names = reference_protein(Path(store), ids, model_proteins, out=spilled)
            if DATASET_COLUMN in obs.columns:  # a pooled reference: which dataset each shared protein comes from
                from omicsclip.config import default_config

                mod, protein = ("rna" if "rna" in present else present[0]), np.load(spilled, mmap_mode="r+")
                sourcing = apply_protein_sources(
                    protein, obs[DATASET_COLUMN].to_numpy()[keep], protein_names,
                    lambda r: emb.matrix(mod, r if rows is None else rows[r]), mode=str(section["protein_sources"]),
                    seed=int(section["seed"]), labels=obs[label_key].to_numpy()[keep] if has_labels else None,
                    ignore_labels=default_config()["evaluate"]["ignore_labels"] if ignore_labels is None else ignore_labels)
        elif explicit_store:
            raise InputError(f"{store}: store not found")
        else:
            log.warning("no store with the reference cells' protein counts: the index cannot impute protein "
                        "(pass --store)")
        source = {"embeddings": str(emb_path.resolve()), "store": None if store is None else str(store),
                  "model_dir": None if model_dir is None else str(model_dir), "splits": splits,
                  "protein_sources": sourcing}
        return write_index_dir(out_dir, embeddings=embeddings, cell_ids=list(ids), model_fingerprint=fingerprint,
                               section=section, protein=protein, protein_names=protein_names, labels=labels,
                               source=source, overwrite=overwrite)
    finally:
        spilled.unlink(missing_ok=True)
