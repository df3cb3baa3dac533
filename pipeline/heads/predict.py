"""Predict with a head: per-cell class probabilities, modality weights and uncertainties.

:func:`predict_head` works on embeddings in memory; :func:`iter_predictions` embeds and labels the cells of an input
source chunk by chunk; :func:`predict_cells` is the ``predict`` command (raw counts of new cells in any ingest
format -> one TSV row per cell).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from omicsclip.conventions import MODALITIES
from omicsclip.errors import InputError
from omicsclip.heads.base import FusionHead, as_tensor, normalised_entropy, one_thread
from omicsclip.heads.ensemble import UncertaintyFusionHead
from omicsclip.heads.headio import check_fingerprint, load_head
from omicsclip.heads.inputs import presence_mask, reliability_mask
from omicsclip.heads.tuning import apply_encoder_layers
from omicsclip.io.atomic import atomic_path
from omicsclip.io.readers import reader_options
from omicsclip.io.tsv import to_tsv
from omicsclip.model.alignment import protein_missing_fraction

log = logging.getLogger(__name__)

_PREDICT_CHUNK = 8192


def predict_head(
    head: FusionHead,
    z_rna: np.ndarray | None,
    z_prot: np.ndarray | None,
    *,
    mask: np.ndarray | None = None,
    mc_samples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Class probabilities, per-modality weights and uncertainties for each cell.

    Parameters
    ----------
    head
        A trained head.
    z_rna, z_prot
        (n, d) embeddings, or ``None`` when a modality is absent for every cell.
    mask
        (n, 2) presence mask (default: finiteness of the rows; an absent array means absent for all cells); a
        protein value below 1 is a degraded panel's reliability
        (:func:`~omicsclip.heads.inputs.reliability_mask`).
    mc_samples
        MC-dropout passes (uncertainty head only).
    seed
        Seed of the MC-dropout and logit-noise sampling.

    Returns
    -------
    dict
        ``probs`` (n, K); ``weights`` (n, 2) (NaN for heads without per-modality weights: early, tensor);
        ``uncertainty`` (n,) normalised entropy of the fused prediction (0 certain .. 1 uniform);
        ``modality_uncertainty`` (n, 2): total predictive variance per modality (uncertainty head) or the
        normalised entropy of each modality's expert (late, gated, single-modality heads); NaN where undefined
        or the modality is absent; ``mask`` (n, 2).
    """
    n = len(z_rna) if z_rna is not None else len(z_prot)
    mask = presence_mask(z_rna, z_prot, n) if mask is None else np.asarray(mask, np.float32)
    zr = np.zeros((n, head.d_rna), np.float32) if z_rna is None else np.nan_to_num(z_rna)
    zp = np.zeros((n, head.d_prot), np.float32) if z_prot is None else np.nan_to_num(z_prot)
    chunks: list[dict[str, np.ndarray]] = []
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(seed)
        for s in range(0, n, _PREDICT_CHUNK):
            sl = slice(s, s + _PREDICT_CHUNK)
            m = as_tensor(mask[sl])
            out = head.predict(as_tensor(zr[sl]), as_tensor(zp[sl]), m, mc_samples=mc_samples)
            if isinstance(head, UncertaintyFusionHead):
                mod_unc = out["modality_var"]
            elif "expert_log_probs" in out:
                mod_unc = normalised_entropy(out["expert_log_probs"])
            else:
                mod_unc = torch.full((len(m), 2), float("nan"))
            if head.fusion in MODALITIES:
                mod_unc = torch.full((len(m), 2), float("nan"))
                mod_unc[:, MODALITIES.index(head.fusion)] = normalised_entropy(out["log_probs"])
            mod_unc = torch.where(m > 0, mod_unc, torch.full_like(mod_unc, float("nan")))
            chunks.append({
                "probs": out["log_probs"].exp().numpy(),
                "weights": out["weights"].numpy(),
                "uncertainty": normalised_entropy(out["log_probs"]).numpy(),
                "modality_uncertainty": mod_unc.numpy(),
            })
    res = {k: np.concatenate([c[k] for c in chunks]) if chunks else np.zeros((0,)) for k in
           ("probs", "weights", "uncertainty", "modality_uncertainty")}
    res["mask"] = mask
    return res



def _has_counts(x: Any, n: int) -> np.ndarray:
    if x is None:
        return np.zeros(n, bool)
    return np.asarray(x.sum(axis=1)).ravel() > 0


def prediction_frame(pred: dict[str, np.ndarray], classes: list[str], barcodes: list[str]) -> pd.DataFrame:
    """Return the ``predict`` table: one row per cell (columns: see :func:`predict_cells`).

    Parameters
    ----------
    pred
        :func:`predict_head` output.
    classes
        Class names, in the head's order.
    barcodes
        The cells' barcodes.
    """
    probs, mask = pred["probs"], pred["mask"]
    none = ~(mask > 0).any(1)
    top = probs.argmax(1)
    df = pd.DataFrame({
        "barcode": barcodes,
        "label": np.where(none, "", np.asarray(classes, dtype=object)[top]),
        "probability": np.where(none, np.nan, probs.max(1)),
        "weight_rna": pred["weights"][:, 0],
        "weight_prot": pred["weights"][:, 1],
        "uncertainty": np.where(none, np.nan, pred["uncertainty"]),
        "uncertainty_rna": pred["modality_uncertainty"][:, 0],
        "uncertainty_prot": pred["modality_uncertainty"][:, 1],
        "has_rna": (mask[:, 0] > 0).astype(int),
        "has_prot": (mask[:, 1] > 0).astype(int),
        # the protein column of the mask is 1 - the fraction missing (0 for a cell without protein: all missing)
        "prot_missing_fraction": 1.0 - np.clip(mask[:, 1], 0.0, 1.0),
    })
    df.loc[none, ["weight_rna", "weight_prot"]] = np.nan
    return df


def iter_predictions(src: Any, model: Any, head: FusionHead, meta: dict[str, Any], *, chunk_cells: int,
                     head_name: str = "head") -> Iterator[pd.DataFrame]:
    """Embed and label the cells of an open source chunk by chunk: the loop of ``predict`` and the notebook API.

    A cell is predicted from the modalities it has (non-zero counts); a protein panel lacking some of the model's
    proteins weighs the protein embedding by 1 minus the fraction missing
    (:func:`~omicsclip.heads.inputs.reliability_mask`). Chunk ``k`` seeds its MC-dropout with ``seed + k``.

    Parameters
    ----------
    src
        An open :class:`~omicsclip.io.readers.InputSource` (files or data in memory), RNA, protein or both.
    model
        The :class:`~omicsclip.model.modelio.TrainedModel` whose embeddings the head classifies (with the head's
        fine-tuned encoder layers applied, if any).
    head, meta
        The head and its ``head.json`` (:func:`~omicsclip.heads.headio.load_head`).
    chunk_cells
        Cells read, embedded and predicted at a time.
    head_name
        How to name the head in messages (its folder).

    Yields
    ------
    pandas.DataFrame
        The ``predict`` table of one chunk (:func:`prediction_frame`; columns: see :func:`predict_cells`).

    Raises
    ------
    InputError
        A single-modality head given cells without that modality, or a source without cells.
    """
    from omicsclip.io.ingest import source_name

    classes = list(meta["classes"])
    hp = meta["params"]
    k = -1
    for k, chunk in enumerate(src.iter_chunks(chunk_cells)):
        m = chunk.n_cells
        mask = np.stack([_has_counts(chunk.rna, m), _has_counts(chunk.prot, m)], 1).astype(np.float32)
        if head.fusion in MODALITIES and not mask[:, MODALITIES.index(head.fusion)].all():
            missing = int((mask[:, MODALITIES.index(head.fusion)] == 0).sum())
            raise InputError(f"head {head_name} uses {head.fusion} only, but {missing} cells of "
                             f"{source_name(src)} have no {head.fusion} counts; use a fusion head")
        emb = model.embed(chunk.rna, chunk.prot, genes=chunk.gene_names if chunk.rna is not None else None,
                          proteins=chunk.protein_names if chunk.prot is not None else None)
        if "prot" in emb:  # a degraded panel: the protein embedding weighs 1 - the fraction missing
            mask = reliability_mask(mask, protein_missing_fraction(model.last_report["prot"], m))
        pred = predict_head(head, emb.get("rna"), emb.get("prot"), mask=mask, mc_samples=int(hp["mc_samples"]),
                            seed=int(hp["seed"]) + k)
        yield prediction_frame(pred, classes, chunk.barcodes)
    if k < 0:
        raise InputError(f"{source_name(src)}: no cells to predict")


def predict_cells(
    inputs: list[str | Path],
    model_dir: str | Path,
    head_dir: str | Path,
    out: str | Path,
    *,
    fmt: str = "auto",
    modality: str | None = None,
    reader: dict[str, Any] | None = None,
    chunk_cells: int,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Label new cells (any ingest format) with a saved head and write a TSV (the ``predict`` command).

    Columns: ``barcode``, ``label`` (empty for a cell with neither modality), ``probability`` (of that label),
    ``weight_rna``/``weight_prot`` (per-modality weights of the fused prediction; NaN for early and tensor heads,
    which have none), ``uncertainty`` (normalised entropy of the prediction, 0..1), ``uncertainty_rna``/
    ``uncertainty_prot`` (per-modality: total predictive variance for the uncertainty head, normalised entropy of
    the modality's expert for the others; NaN where undefined), ``has_rna``/``has_prot`` (the modality was given
    for the cell: present in the input with non-zero counts; an absent modality is masked, not zero-filled),
    ``prot_missing_fraction`` (fraction of the model's proteins the cell's panel lacks, 1 without protein; the
    heads weigh its protein embedding by 1 minus it). Text fields are escaped (:func:`omicsclip.io.tsv.to_tsv`):
    one line per cell whatever the labels and barcodes hold.

    An input lacking more than the model's ``max_missing_protein_fraction`` of its proteins is refused.

    Parameters
    ----------
    inputs
        One or two input paths (see :func:`omicsclip.io.readers.open_input`); one modality is enough.
    model_dir
        The model whose embeddings the head was trained on (fingerprints must match, else refused).
    head_dir
        The head folder from ``omicsclip finetune``.
    out
        Output TSV path.
    fmt, modality
        Input format and, for a single-matrix input, which modality it holds.
    reader
        Reader options (the ``ingest:`` config section: modality names, isotype patterns, pairing, ...).
    chunk_cells
        Cells read, embedded and predicted at a time.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    dict
        Summary: ``n_cells``, cells per present-modality pattern, label counts.
    """
    from omicsclip.io.atomic import check_writable
    from omicsclip.io.readers import open_input
    from omicsclip.model.modelio import load_model

    out = Path(out)
    check_writable(out, overwrite=overwrite, inputs=(*inputs, model_dir, head_dir))
    head, meta, extra = load_head(head_dir)
    model = load_model(model_dir)
    check_fingerprint(meta, model.fingerprint, head_dir=head_dir)
    if apply_encoder_layers(model, extra, source=str(Path(head_dir) / "head.safetensors")):
        log.info("using the head's fine-tuned last encoder layers")
    counts: dict[str, int] = {}
    n = 0
    with open_input([str(p) for p in inputs], fmt, require="any", modality=modality,
                    **reader_options(reader)) as src, atomic_path(out, overwrite=overwrite) as tmp:
        if reader_options(reader).get("harmonise_proteins"):
            src.match_proteins(model.proteins, reader_options(reader).get("protein_aliases"))
        with open(tmp, "w", newline="") as fh:
            for k, df in enumerate(iter_predictions(src, model, head, meta, chunk_cells=chunk_cells,
                                                    head_name=str(head_dir))):
                to_tsv(df, fh, header=(k == 0), float_format="%.6g")
                n += len(df)
                for lab, c in df["label"].value_counts().items():
                    counts[str(lab)] = counts.get(str(lab), 0) + int(c)
                code = np.bincount(2 * df["has_rna"].to_numpy(int) + df["has_prot"].to_numpy(int), minlength=4)
                for key, c in zip(("none", "prot_only", "rna_only", "both"), code.tolist(), strict=True):
                    if c:
                        counts[f"cells_{key}"] = counts.get(f"cells_{key}", 0) + c
    n_none = counts.get("cells_none", 0)
    if n_none:
        log.warning("%d cells have neither RNA nor protein counts: no label", n_none)
    log.info("wrote %s: %d cells", out, n)
    return {"n_cells": n, **{k: v for k, v in counts.items() if k.startswith("cells_")},
            "labels": {k: v for k, v in counts.items() if not k.startswith("cells_")}}
