"""Light encoder fine-tuning: the encoders' last layers, trained with a head from a store's raw counts.

The tuned layers are saved with the head and applied to the loaded model at prediction time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from omicsclip.conventions import MODALITIES
from omicsclip.errors import InputError
from omicsclip.heads.base import FusionHead, as_tensor
from omicsclip.heads.fit import HeadParams, LastLayerTuner, fit_head_with_encoders
from omicsclip.heads.inputs import Embedding


def penultimate_features(model: Any, rna: Any, prot: Any, *, genes: list[str], proteins: list[str],
                         gene_masks: tuple[np.ndarray, np.ndarray] | None = None,
                         protein_masks: tuple[np.ndarray, np.ndarray] | None = None,
                         batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Return the outputs of the (frozen) layers below each encoder's projection, with the model's preprocessing.

    The inputs are prepared as :meth:`omicsclip.model.modelio.TrainedModel.embed` prepares them, so the tuned
    layers see what training, ``embed`` and ``predict`` give them.

    Parameters
    ----------
    model
        A :class:`omicsclip.model.modelio.TrainedModel`.
    rna, prot
        Raw counts (cells x genes CSR, cells x proteins; NaN where a cell's panel lacked a protein).
    genes, proteins
        Their feature names (matched to the model's by name).
    gene_masks, protein_masks
        ``(codes, table)`` for the rows of a store pooled from several datasets
        (:func:`omicsclip.io.panels.store_gene_masks` / ``store_protein_masks``, codes of these cells): each cell
        enters with its own dataset's genes and proteins only, the others unmeasured (not zero counts), as
        ``omicsclip embed`` does (:func:`omicsclip.io.panels.dataset_groups`).
    batch_size
        Cells per forward pass.
    """
    from omicsclip.io.panels import column_names, dataset_groups

    n = rna.shape[0]
    if n == 0:
        enc = model.model
        return np.empty((0, enc.rna.proj.in_features), np.float32), np.empty((0, enc.prot.proj.in_features), np.float32)
    hr, hp = None, None
    for _, rows, gcols, pcols in dataset_groups(gene_masks, protein_masks):
        r, p = _penultimate(model, rna[rows][:, gcols], prot[rows][:, pcols], column_names(genes, gcols),
                            column_names(proteins, pcols), batch_size)
        if hr is None:
            hr, hp = np.empty((n, r.shape[1]), np.float32), np.empty((n, p.shape[1]), np.float32)
        hr[rows], hp[rows] = r, p
    return hr, hp


def _penultimate(model: Any, rna: Any, prot: Any, genes: list[str], proteins: list[str],
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`penultimate_features` of cells that share their measured genes."""
    from omicsclip.model.alignment import align_proteins, align_rna

    counts, lib, rep = align_rna(rna, genes, model.state, as_closest_dataset=True)
    mask = rep.present_mask(model.state.genes)
    present = torch.ones(len(model.state.genes)) if mask is None else torch.as_tensor(mask, dtype=torch.float32)
    pcounts, ppresent, _ = align_proteins(prot, proteins, model.state, as_closest_dataset=True)
    enc = model.model.eval()
    hr, hp = [], []
    with torch.no_grad():
        for s in range(0, counts.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            xr = model.pre.rna(torch.as_tensor(counts[sl].toarray()), torch.as_tensor(lib[sl]), present)
            xp = model.pre.prot(torch.as_tensor(pcounts[sl]),
                                torch.as_tensor(ppresent if ppresent.ndim == 1 else ppresent[sl]))
            hr.append(enc.rna.body(xr).float().numpy())
            hp.append(enc.prot.body(xp).float().numpy())
    return np.concatenate(hr), np.concatenate(hp)


def apply_encoder_layers(model: Any, tensors: dict[str, torch.Tensor], source: str = "head") -> bool:
    """Load fine-tuned last encoder layers (``encoder.*`` tensors of a head) into a loaded model, in place.

    ``source`` names the head's weights file in a refusal. Returns whether any were applied.
    """
    applied = False
    for mod in MODALITIES:
        state = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"encoder.{mod}.proj.")}
        if state:
            try:
                getattr(model.model, mod).proj.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                why = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
                raise InputError(f"{source}: fine-tuned {mod} encoder layer does not fit the model ({why})") from None
            applied = True
    return applied


def fit_with_store(store: str | Path | None, model_dir: str | Path | None, emb: Embedding, idx: np.ndarray,
                   y: np.ndarray, n_classes: int, params: HeadParams, eval_rows: np.ndarray,
                   pool_rows: np.ndarray) -> tuple[FusionHead, dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Fit a head and the encoders' last layers from the store's raw counts of an embedding's cells.

    Parameters
    ----------
    store, model_dir
        The paired store and the model folder the embedding was made with (both required).
    emb
        The embedding (its cells' barcodes and model fingerprint).
    idx, y, n_classes, params
        Rows of the labelled cells in ``emb``, their classes, the number of classes, the hyper-parameters.
    eval_rows, pool_rows
        Rows to embed with the tuned layers (held-out evaluation) and unlabelled training rows.

    Returns
    -------
    tuple
        The head, the tuned layers' tensors and the tuned embeddings of ``eval_rows`` (``rna``, ``prot``).
    """
    from omicsclip.io.panels import store_gene_masks, store_protein_masks
    from omicsclip.io.store import read_store, store_info
    from omicsclip.model.modelio import load_model

    if store is None or model_dir is None:
        raise InputError("finetune.finetune_encoder needs --store STORE and --model MODEL_DIR")
    model = load_model(model_dir)
    if emb.fingerprint is not None and emb.fingerprint != model.fingerprint:
        raise InputError(f"{emb.path}: embedding was made by model {emb.fingerprint}, "
                         f"not by {model_dir} ({model.fingerprint})")
    data = read_store(store)
    rows = np.unique(np.concatenate([idx, eval_rows, pool_rows]))
    pos = pd.Index(data.barcodes).get_indexer([str(b) for b in emb.obs.index[rows]])
    if (pos < 0).any():
        raise InputError(f"{store}: {int((pos < 0).sum())} cells of {emb.path} are not in the store")
    info = store_info(store)  # a store pooled from several datasets: each cell with its own genes and panel
    gmask, pmask = store_gene_masks(info), store_protein_masks(info)
    hr, hp = penultimate_features(model, data.rna[pos], data.prot[pos], genes=data.gene_names,
                                  proteins=data.protein_names,
                                  gene_masks=None if gmask is None else (gmask[0][pos], gmask[1]),
                                  protein_masks=None if pmask is None else (pmask[0][pos], pmask[1]))
    where = {r: i for i, r in enumerate(rows)}

    def take(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = np.array([where[i] for i in r], dtype=np.int64)
        return hr[k], hp[k]

    tuner = LastLayerTuner(model.model.rna.proj, model.model.prot.proj, model.model.members)
    head = fit_head_with_encoders(*take(idx), y, n_classes, params, tuner,
                                  unlabelled=take(pool_rows) if len(pool_rows) else None, progress=True)
    with torch.no_grad():
        er, ep = tuner(*(as_tensor(a) for a in take(eval_rows)))
    return head, tuner.tensors(), {"rna": er.numpy(), "prot": ep.numpy()}
