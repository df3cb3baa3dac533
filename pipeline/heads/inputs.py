"""What the heads read: the per-modality embeddings of an ``omicsclip embed`` file and their presence mask.

The mask says how much each modality of a cell is to be trusted: 0 = absent, 1 = present; a protein embedding made
from a panel that lacked some of the model's proteins gets ``1 - fraction missing`` (:func:`reliability_mask`),
which the heads use as a soft weight (:func:`omicsclip.heads.base.masked_log_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from omicsclip.errors import InputError
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


def reliability_mask(mask: np.ndarray, prot_missing: np.ndarray | None) -> np.ndarray:
    """Return ``mask`` with its protein column weighted by ``1 - prot_missing`` (a soft mask in [0, 1]).

    A cell whose panel lacked a fraction ``f`` of the model's proteins gets protein weight ``1 - f``: 1 (all
    proteins) is today's present modality, 0 today's absent one; in between the gated and uncertainty heads move
    weight to RNA (:func:`omicsclip.heads.base.masked_log_weights`).

    Parameters
    ----------
    mask
        (n, 2) presence mask (:func:`presence_mask`).
    prot_missing
        (n,) per-cell fraction of the model's proteins missing (``Embeddings.prot_missing_fraction``), or ``None``
        (every protein there: ``mask`` unchanged).
    """
    mask = np.array(mask, np.float32)
    if prot_missing is None:
        return mask
    frac = np.asarray(prot_missing, np.float32).ravel()
    if frac.shape != (len(mask),):
        raise InputError(f"protein missing fractions: {frac.size} values for {len(mask)} cells")
    if not (np.isfinite(frac) & (frac >= 0) & (frac <= 1)).all():
        raise InputError("protein missing fractions must lie in [0, 1]")
    mask[:, 1] *= 1.0 - frac
    return mask


@dataclass
class Embedding:
    """The RNA and protein embeddings of an ``omicsclip embed`` output, in memory, with their presence mask.

    Attributes
    ----------
    z_rna, z_prot
        (n, d) float32 embeddings.
    mask
        (n, 2) soft presence mask: :func:`presence_mask` with the protein column weighted by ``1 - prot_missing``
        (:func:`reliability_mask`).
    prot_missing
        (n,) per-cell fraction of the model's proteins missing from the panel the protein embedding was made from.
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
    prot_missing: np.ndarray
    obs: pd.DataFrame
    fingerprint: str | None
    path: Path

    @property
    def split(self) -> np.ndarray | None:
        """Return obs ``split`` (train/val/test per cell) as strings, or ``None`` when there is no such column."""
        return self.obs["split"].astype(str).to_numpy() if "split" in self.obs.columns else None


def read_embedding(path: str | Path | Embeddings, rows: np.ndarray | None = None) -> Embedding:
    """Read the RNA and protein embeddings of an ``omicsclip embed`` output, with their (soft) presence mask.

    The file is opened with :func:`omicsclip.model.embed.open_embeddings`, the one embeddings reader; the per-cell
    fraction of missing proteins comes from :meth:`~omicsclip.model.embed.Embeddings.prot_missing_fraction`.

    Parameters
    ----------
    path
        The embeddings file, or one already opened; one missing embedding is an
        :class:`~omicsclip.errors.InputError` naming it.
    rows
        Read only these cells (sorted positions; ``obs`` is cut to them too): bounded memory on an atlas.
    """
    emb = path if isinstance(path, Embeddings) else open_embeddings(path)
    emb.require("rna", "prot")
    z_rna, z_prot = emb.matrix("rna", rows), emb.matrix("prot", rows)
    missing, obs = emb.prot_missing_fraction(), emb.obs
    if rows is not None:
        missing, obs = missing[rows], obs.iloc[rows]
    return Embedding(z_rna=z_rna, z_prot=z_prot, mask=reliability_mask(presence_mask(z_rna, z_prot), missing),
                     prot_missing=missing, obs=obs, fingerprint=emb.fingerprint, path=emb.path)
