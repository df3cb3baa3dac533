"""Saved models: ``model.safetensors`` + ``model.json`` (+ ``split.tsv``), and the inference API.

``load_model(model_dir)`` returns a :class:`TrainedModel` whose :meth:`TrainedModel.embed` takes raw counts of new
cells, matches their features by name, applies the saved preprocessing and returns L2-normalised embeddings.
Weights are read with safetensors; nothing is unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from omicsclip.errors import InputError
from omicsclip.io.hashing import sha256_file, sha256_tree
from omicsclip.io.jsonfile import read_json_object, write_json
from omicsclip.io.split import read_split
from omicsclip.model.alignment import align_proteins, align_rna
from omicsclip.model.encoders import DualEncoder, build_model
from omicsclip.model.preprocess import PreprocessState, TorchPreprocessor
from omicsclip.model.statecheck import (
    Fields,
    check_model_config,
    check_preprocessing,
    meta_shapes,
    one_line,
    shape_mismatch,
    show,
    weight_shapes,
)

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
META = "model.json"
SPLIT = "split.tsv"
FORMAT = "omicsclip-model"
FORMAT_VERSION = 1


def store_fingerprint(store: str | Path) -> str:
    """Return the data fingerprint: :func:`omicsclip.io.hashing.sha256_tree` of the store folder."""
    return sha256_tree(store)


def write_weights(model: DualEncoder, path: Path) -> str:
    """Save the state dict as safetensors; return the file's sha256 (the model fingerprint).

    Parameters
    ----------
    model
        The trained model.
    path
        The ``.safetensors`` file to write.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))
    return sha256_file(path)


def write_model_files(out_dir: Path, model: DualEncoder, state: PreprocessState, config: dict[str, Any],
                      extra: dict[str, Any]) -> str:
    """Write ``model.safetensors`` and then ``model.json`` (whose presence marks a complete model).

    Parameters
    ----------
    out_dir
        The model folder (it exists).
    model
        The trained model.
    state
        Its fitted preprocessing.
    config
        The full config of the run (``build_model`` reads ``model`` and ``train`` from it when loading).
    extra
        More ``model.json`` fields (fingerprints, cell counts, training summary).

    Returns
    -------
    str
        The model fingerprint (sha256 of ``model.safetensors``).
    """
    from omicsclip import __version__

    fingerprint = write_weights(model, out_dir / WEIGHTS)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
        "model_fingerprint": fingerprint, "config": config, "preprocessing": state.to_dict(),
        "architecture": {"n_rna_inputs": model.rna.n_in, "n_prot_inputs": model.prot.n_in}, **extra,
    }
    write_json(out_dir / META, meta)
    return fingerprint


def joint_embedding(rna_emb: np.ndarray, prot_emb: np.ndarray) -> np.ndarray:
    """Return the L2-normalised mean of the RNA and protein embeddings of the same cells (float32).

    Parameters
    ----------
    rna_emb, prot_emb
        Embeddings of the same cells (cells x d each).
    """
    m = (np.asarray(rna_emb, np.float32) + np.asarray(prot_emb, np.float32)) / 2
    return (m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class TrainedModel:
    """A trained dual encoder with its preprocessing, split and config.

    Attributes
    ----------
    path
        The model folder.
    fingerprint
        sha256 of ``model.safetensors``.
    genes, proteins
        The model's input features (names, in model order).
    split
        barcode -> "train" / "val" / "test" of the training store.
    config
        The full config used for training.
    meta
        Everything in ``model.json``.
    last_report
        Feature matching of the last :meth:`embed` call: ``{"rna": {...}, "prot": {...}}``.
    """

    def __init__(self, path: Path, meta: dict[str, Any], model: DualEncoder, split: pd.Series,
                 device: torch.device) -> None:
        self.path = path
        self.meta = meta
        self.model = model.eval()
        self.split = split
        self.device = device
        self.state = PreprocessState.from_dict(meta["preprocessing"])
        self.pre = TorchPreprocessor(self.state, device)
        self.last_report: dict[str, Any] = {}

    @property
    def fingerprint(self) -> str:
        """sha256 of ``model.safetensors``."""
        return str(self.meta["model_fingerprint"])

    @property
    def config(self) -> dict[str, Any]:
        """The full config of the training run."""
        return self.meta["config"]

    @property
    def genes(self) -> list[str]:
        """The model's input genes, in model order."""
        return list(self.state.genes)

    @property
    def proteins(self) -> list[str]:
        """The model's input proteins, in model order."""
        return list(self.state.proteins)

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings (``members * model.embed_dim``)."""
        return int(self.model.rna.proj.out_features)

    @torch.no_grad()
    def _embed_rna(self, rna: sp.spmatrix | np.ndarray, genes: Sequence[str] | None, batch_size: int) -> np.ndarray:
        counts, lib, report = align_rna(rna, genes, self.state, as_closest_dataset=True)
        self.last_report["rna"] = report.to_dict()
        mask = report.present_mask(self.state.genes)
        keep = None if mask is None else torch.as_tensor(mask, dtype=torch.float32, device=self.device)
        out = np.empty((counts.shape[0], self.embed_dim), np.float32)
        for start in range(0, counts.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            chunk = counts[sl]
            libt = torch.as_tensor(lib[sl], device=self.device)
            if self.pre.rna_proj is not None:  # the training path: from the non-zeros
                row = torch.as_tensor(np.repeat(np.arange(chunk.shape[0]), np.diff(chunk.indptr)), device=self.device)
                col = torch.as_tensor(chunk.indices.astype(np.int64), device=self.device)
                val = torch.as_tensor(chunk.data, device=self.device)
                x = self.pre.rna_sparse(row, col, val, libt, chunk.shape[0], keep)
            else:
                x = self.pre.rna(torch.as_tensor(chunk.toarray(), device=self.device), libt, keep)
            out[sl] = self.model.encode_rna(x).cpu().numpy()
        return out

    @torch.no_grad()
    def _embed_prot(self, prot: np.ndarray | sp.spmatrix | pd.DataFrame, proteins: Sequence[str] | None,
                    batch_size: int) -> np.ndarray:
        counts, present, report = align_proteins(prot, proteins, self.state, as_closest_dataset=True)
        self.last_report["prot"] = report.to_dict()
        mask = torch.as_tensor(present, device=self.device)
        out = np.empty((counts.shape[0], self.embed_dim), np.float32)
        for start in range(0, counts.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            x = self.pre.prot(torch.as_tensor(counts[sl], device=self.device), mask if mask.dim() == 1 else mask[sl])
            out[sl] = self.model.encode_prot(x).cpu().numpy()
        return out

    def embed(self, rna: sp.spmatrix | np.ndarray | None = None,
              prot: np.ndarray | sp.spmatrix | pd.DataFrame | None = None, *,
              genes: Sequence[str] | None = None, proteins: Sequence[str] | None = None,
              batch_size: int = 4096) -> dict[str, np.ndarray]:
        """Embed raw counts of new cells.

        Parameters
        ----------
        rna
            Cells x genes raw counts (CSR or dense), or ``None``.
        prot
            Cells x proteins raw counts (array, sparse or DataFrame with protein columns), or ``None``.
        genes, proteins
            Column names; matched to the model's features by name (see :func:`omicsclip.model.alignment.align_rna`).
        batch_size
            Cells per forward pass.

        Returns
        -------
        dict
            ``"rna"`` and/or ``"prot"``: L2-normalised float32 embeddings (cells x embed_dim). The feature
            matching report is in :attr:`last_report`.

        Raises
        ------
        InputError
            More than ``max_missing_gene_fraction`` of the model's genes missing, no shared protein, or
            inconsistent shapes.
        """
        if rna is None and prot is None:
            raise InputError("embed: give RNA and/or protein counts")
        if rna is not None and prot is not None and rna.shape[0] != prot.shape[0]:
            raise InputError(f"embed: RNA has {rna.shape[0]} cells but protein has {prot.shape[0]}")
        self.last_report = {}
        out: dict[str, np.ndarray] = {}
        if rna is not None:
            out["rna"] = self._embed_rna(rna, genes, int(batch_size))
        if prot is not None:
            out["prot"] = self._embed_prot(prot, proteins, int(batch_size))
        return out


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """Read ``model.json`` of a model folder, checked by key (format, config, architecture, preprocessing).

    Parameters
    ----------
    model_dir
        The model folder.

    Raises
    ------
    InputError
        The folder or ``model.json`` is missing, it is not an omicsclip model description, or a field is missing,
        of the wrong type or inconsistent with another (one line naming the file and the key).
    """
    model_dir = Path(model_dir)
    path = model_dir / META
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: model folder not found")
    if not path.exists():
        raise InputError(f"{model_dir}: not a complete omicsclip model (no {META})")
    meta = read_json_object(path)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: not an omicsclip model (format {show(meta.get('format'))} "
                         f"v{show(meta.get('format_version'))})")
    missing = [k for k in ("model_fingerprint", "config", "architecture", "preprocessing") if k not in meta]
    if missing:
        raise InputError(f"{path}: incomplete model description (no {', '.join(missing)})")
    f = Fields(path, meta)
    f.text("model_fingerprint")
    check_model_config(path, meta["config"])
    arch = f.sub("architecture")
    n_rna, n_prot = arch.integer("n_rna_inputs", 1), arch.integer("n_prot_inputs", 1)
    rna_width, prot_width = check_preprocessing(path, meta["preprocessing"])
    if (n_rna, n_prot) != (rna_width, prot_width):
        key, have, want = (("n_rna_inputs", n_rna, rna_width) if n_rna != rna_width
                           else ("n_prot_inputs", n_prot, prot_width))
        raise arch.fail(key, f"is {have}, but the preprocessing makes {want} inputs")
    try:
        PreprocessState.from_dict(meta["preprocessing"])
    except InputError as exc:
        raise InputError(f"{path}: {one_line(exc)}") from None
    return meta


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a trained model for inference (weights via safetensors; integrity checked by fingerprint).

    ``model.json`` is validated by key (:func:`read_meta`) and the architecture it describes is compared with the
    tensors of ``model.safetensors`` (names and shapes, from the file's header) before anything is allocated.

    Parameters
    ----------
    model_dir
        Folder written by ``omicsclip train``.
    device
        Where to run the encoders.

    Raises
    ------
    InputError
        A missing, corrupt or inconsistent file: one line naming it.
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    weights = model_dir / WEIGHTS
    if not weights.exists():
        raise InputError(f"{model_dir}: {WEIGHTS} is missing")
    if sha256_file(weights) != meta["model_fingerprint"]:
        raise InputError(f"{weights}: weights do not match the fingerprint in {META} (corrupt or replaced)")
    cfg, arch = meta["config"], meta["architecture"]

    def build() -> DualEncoder:
        return build_model(arch["n_rna_inputs"], arch["n_prot_inputs"], cfg["model"], cfg["train"])

    found = weight_shapes(weights, what="re-run omicsclip train")
    try:
        expected = meta_shapes(build)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{model_dir / META}: config cannot build the encoders ({one_line(exc, 100)})") from None
    mismatch = shape_mismatch(found, expected)
    if mismatch:
        raise InputError(f"{model_dir / META}: architecture does not match {WEIGHTS} ({mismatch})")
    model = build()
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a malformed file
        raise InputError(f"{weights}: weights do not fit the architecture in {META} ({one_line(exc, 100)})") from None
    device = torch.device(device)
    split_path = model_dir / SPLIT
    split = read_split(split_path) if split_path.exists() else pd.Series(dtype=str, name="split")
    return TrainedModel(model_dir, meta, model.to(device), split, device)
