"""``embed_store``: RNA, protein and joint embeddings of every cell of a store, written as an AnnData zarr."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io.atomic import atomic_path
from pipeline.modelio import joint_embedding, load_model

log = logging.getLogger(__name__)

OBSM_RNA, OBSM_PROT, OBSM_JOINT = "X_omicsclip_rna", "X_omicsclip_prot", "X_omicsclip_joint"
UNSEEN = "unseen"  # split label of cells that are not in the model's split (another store)


def embed_store(store: str | Path, model_dir: str | Path, out: str | Path, *, overwrite: bool = False,
                device: str = "cpu", batch_size: int = 4096, chunk_cells: int = 20_000) -> Path:
    """Embed every cell of a paired store and write an AnnData zarr (atomically).

    Parameters
    ----------
    store
        Paired store (``omicsclip ingest``).
    model_dir
        Trained model folder.
    out
        Output ``.zarr``: obs = the store's obs plus ``split`` (train/val/test, or ``"unseen"`` for cells the
        model's split does not list); obsm ``X_omicsclip_rna``, ``X_omicsclip_prot``, ``X_omicsclip_joint``;
        ``uns["omicsclip"]`` with the model fingerprint and the feature matching report.
    overwrite
        Replace an existing output.
    device
        Where to run the encoders (``cpu``, ``cuda``, ``auto``).
    batch_size, chunk_cells
        Cells per forward pass / per chunk read from the store (bounded memory).
    """
    import anndata as ad

    from pipeline.io.store import iter_store, store_info
    from pipeline.train import resolve_device

    out = Path(out)
    with atomic_path(out, overwrite=overwrite, inputs=(store, model_dir)) as tmp:
        model = load_model(model_dir, resolve_device(device))
        info = store_info(store)
        genes = [str(g) for g in info["genes"].index]
        proteins = [str(p) for p in info["proteins"].index]
        rna_parts, prot_parts = [], []
        report: dict = {}
        for rna, prot, _ in iter_store(store, chunk_cells):
            e = model.embed(rna, prot, genes=genes, proteins=proteins, batch_size=batch_size)
            rna_parts.append(e["rna"])
            prot_parts.append(e["prot"])
            report = model.last_report
        d = model.embed_dim
        emb_rna = np.concatenate(rna_parts) if rna_parts else np.zeros((0, d), np.float32)
        emb_prot = np.concatenate(prot_parts) if prot_parts else np.zeros((0, d), np.float32)
        obs = info["obs"].copy()
        obs.index = obs.index.astype(str)
        split = model.split.reindex(obs.index).fillna(UNSEEN)
        if (split == UNSEEN).any():
            log.info("%d of %d cells are not in the model's split (labelled %r)", int((split == UNSEEN).sum()),
                     len(obs), UNSEEN)
        obs["split"] = pd.Categorical(split.to_numpy(), categories=["train", "val", "test", UNSEEN])
        adata = ad.AnnData(obs=obs)
        adata.obsm[OBSM_RNA] = emb_rna
        adata.obsm[OBSM_PROT] = emb_prot
        adata.obsm[OBSM_JOINT] = joint_embedding(emb_rna, emb_prot)
        adata.uns["omicsclip"] = {
            "model_fingerprint": model.fingerprint, "model_dir": str(Path(model_dir).resolve()),
            "store": str(Path(store).resolve()), "embed_dim": d, "feature_report_json": json.dumps(report),
        }
        with ad.settings.override(zarr_write_format=2), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Writing zarr v2", category=UserWarning)
            adata.write_zarr(tmp)
    log.info("wrote %s: %d cells x %d dims (model %s...)", out, len(obs), d, model.fingerprint[:12])
    return out
