"""What the heads read: the per-modality embeddings of an ``omicsclip embed`` file and their presence mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from omicsclip.model.embed import Embeddings, open_embeddings


def presence_mask(z_rna: np.ndarray | None, z_prot: np.ndarray | None, n: int | None = None) -> np.ndarray:
    """Return the (n, 2) float32 presence mask: 1 where a modality's embedding is given and finite, else 0.

    Parameters
    ----------
    z_rna, z_prot
        (n, d) embeddings, or ``None`` for a modality absent for every cell.
    n
        Number of cells (default: the rows of the first array given).
    """
    n = n if n is not None else len(z_rna if z_rna is not None else z_prot)
    mask = np.zeros((n, 2), np.float32)
    for j, z in enumerate((z_rna, z_prot)):
        if z is not None:
            mask[:, j] = np.isfinite(np.asarray(z)).all(1)
    return mask


@dataclass
class Embedding:
    """The RNA and protein embeddings of an ``omicsclip embed`` output, in memory, with their presence mask.

    Attributes
    ----------
    z_rna, z_prot
        (n, d) float32 embeddings.
    mask
        (n, 2) presence mask (:func:`presence_mask`).
    obs
        The cells' annotations (labels, ``split``).
    fingerprint
        Fingerprint of the model that made the embeddings, or ``None``.
    path
        The file read.
    """

    z_rna: np.ndarray
    z_prot: np.ndarray
    mask: np.ndarray
    obs: pd.DataFrame
    fingerprint: str | None
    path: Path

    @property
    def split(self) -> np.ndarray | None:
        """Return obs ``split`` (train/val/test per cell) as strings, or ``None`` when there is no such column."""
        return self.obs["split"].astype(str).to_numpy() if "split" in self.obs.columns else None


def read_embedding(path: str | Path | Embeddings) -> Embedding:
    """Read the RNA and protein embeddings of an ``omicsclip embed`` output, with their presence mask.

    The file is opened with :func:`omicsclip.model.embed.open_embeddings`, the one embeddings reader.

    Parameters
    ----------
    path
        The embeddings file, or one already opened; one missing embedding is an
        :class:`~omicsclip.errors.InputError` naming it.
    """
    emb = path if isinstance(path, Embeddings) else open_embeddings(path)
    emb.require("rna", "prot")
    z_rna, z_prot = emb.matrix("rna"), emb.matrix("prot")
    return Embedding(z_rna=z_rna, z_prot=z_prot, mask=presence_mask(z_rna, z_prot), obs=emb.obs,
                     fingerprint=emb.fingerprint, path=emb.path)
