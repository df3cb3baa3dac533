"""Train a few-label head: hyper-parameters, augmentations, the training loop (seeded, full-batch Adam).

The loop is shared by heads on frozen embeddings (:func:`fit_head`) and light fine-tuning of the encoders' last
layers (:func:`fit_head_with_encoders`).

Training: full-batch Adam on the labelled cells (repeated to >= 256 rows per step, each copy freshly augmented:
modality dropout for the multimodal heads, a modality replaced by a random unit vector for the gated and
uncertainty heads), with an L2 penalty on the classifiers' weights as in logistic regression (C = 1/weight_decay).
The gated and uncertainty heads also see unlabelled TRAINING cells (never their labels, never test cells) with
the same augmentations, to learn what a corrupted modality looks like.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from omicsclip.conventions import MODALITIES
from omicsclip.errors import InputError
from omicsclip.heads.base import (
    FUSIONS,
    MULTIMODAL_FUSIONS,
    FusionHead,
    as_tensor,
    one_thread,
    random_unit_vectors,
)
from omicsclip.heads.calibration import calibrate_out_of_bag
from omicsclip.heads.ensemble import BootstrapMixin
from omicsclip.heads.fusion import build_head
from omicsclip.heads.inputs import presence_mask
from omicsclip.model.encoders import normalize_members
from omicsclip.progress import Progress

log = logging.getLogger(__name__)

CORRUPTION_FUSIONS = ("gated", "uncertainty")  # heads trained with noise augmentation (they can down-weight it)
_MIN_ROWS = 256  # the labelled set is repeated (with fresh augmentations) to at least this many rows per step


@dataclass(frozen=True)
class HeadParams:
    """Hyper-parameters of a head and its training: the ``finetune:`` config section (see configs/default.yaml).

    Build it with :meth:`from_section`; every field is required (the defaults live in configs/default.yaml only).
    """

    fusion: str
    head: str
    hidden: int
    epochs: int
    lr: float
    weight_decay: float
    dropout: float
    mc_samples: int
    tensor_rank: int
    ensemble: int
    modality_dropout: float
    corrupt_prob: float
    finetune_encoder: bool
    encoder_lr: float
    seed: int

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> HeadParams:
        """Build from a ``finetune:`` config section (every key needed; unknown keys are ignored).

        Parameters
        ----------
        section
            The validated ``finetune:`` section, e.g. ``load_config(path)["finetune"]`` or a saved head's
            ``params``.
        """
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in section]
        if missing:
            raise InputError(f"finetune: missing {', '.join(missing)} (pass the whole validated `finetune:` config "
                             "section, e.g. load_config(None)['finetune'])")
        params = cls(**{k: section[k] for k in names})
        if params.fusion not in FUSIONS:
            raise InputError(f"finetune.fusion: must be one of {', '.join(FUSIONS)}, got {params.fusion!r}")
        return params


def augment(
    z_rna: torch.Tensor,
    z_prot: torch.Tensor,
    mask: torch.Tensor,
    *,
    modality_dropout: float,
    corrupt_prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply modality dropout (mask a modality) and corruption (replace it by a random unit vector, mask still 1).

    Only cells with both modalities are augmented; each gets at most one change, to a modality chosen at random.

    Parameters
    ----------
    z_rna, z_prot, mask
        The cells' embeddings and presence mask.
    modality_dropout, corrupt_prob
        Fractions of two-modality cells with one modality masked, and with one replaced by noise.
    generator
        The random generator.

    Returns
    -------
    tuple
        The new ``z_rna``, ``z_prot``, ``mask`` and ``corrupted`` (n, 2 bool).
    """
    n = len(mask)
    both = (mask[:, 0] > 0) & (mask[:, 1] > 0)
    u = torch.rand(n, generator=generator)
    which = torch.randint(0, 2, (n,), generator=generator)
    drop = both & (u < modality_dropout)
    corrupt = both & (u >= modality_dropout) & (u < modality_dropout + corrupt_prob)
    mask = mask.clone()
    mask[drop, which[drop]] = 0.0
    corrupted = torch.zeros(n, 2, dtype=torch.bool)
    corrupted[corrupt, which[corrupt]] = True
    out = []
    for j, z in enumerate((z_rna, z_prot)):
        rows = corrupted[:, j]
        if rows.any():
            z = z.clone()
            z[rows] = random_unit_vectors(int(rows.sum()), z.shape[1], generator)
        out.append(z)
    return out[0], out[1], mask, corrupted




class LastLayerTuner(nn.Module):
    """Light encoder fine-tuning: trainable copies of the encoders' last (projection) layers.

    The layers below are frozen, so their outputs (penultimate features) are computed once; each step maps them
    through the trainable projections and L2-normalises, exactly as :class:`omicsclip.model.encoders.DualEncoder` does.
    """

    def __init__(self, rna_proj: nn.Module, prot_proj: nn.Module, members: int = 1) -> None:
        super().__init__()
        self.members = int(members)
        self.rna = copy.deepcopy(rna_proj)
        self.prot = copy.deepcopy(prot_proj)
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(self, h_rna: torch.Tensor, h_prot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (member-normalised) embeddings of penultimate features ``h_rna``, ``h_prot``."""
        return (normalize_members(self.rna(h_rna), self.members),
                normalize_members(self.prot(h_prot), self.members))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Return the tuned layers as ``encoder.<modality>.proj.<param>`` tensors (saved with the head)."""
        return {f"encoder.{mod}.proj.{k}": v for mod, layer in (("rna", self.rna), ("prot", self.prot))
                for k, v in layer.state_dict().items()}


def _check_fit_inputs(y: np.ndarray, n_classes: int, mask: np.ndarray, fusion: str) -> None:
    if len(y) == 0:
        raise InputError("no labelled cells to train the head on")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    if fusion in MODALITIES and not mask[:, MODALITIES.index(fusion)].any():
        raise InputError(f"head {fusion!r}: none of the labelled cells has that modality")


def _train(
    head: FusionHead,
    params: HeadParams,
    y: torch.Tensor,
    mask: torch.Tensor,
    labelled: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    pool: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
    pool_mask: torch.Tensor | None,
    gen: torch.Generator,
    tuner: LastLayerTuner | None = None,
    *,
    progress: bool = False,
) -> float:
    """Train ``head`` (and ``tuner``'s layers, when given) in place; return the last loss.

    Each step: the labelled cells, repeated to at least ``_MIN_ROWS`` rows, with fresh augmentations (modality
    dropout for the multimodal heads, noise corruption for the gated/uncertainty heads); plus, for heads that use
    them, ``_MIN_ROWS`` augmented unlabelled pool cells (label-free loss). With ``progress``, the full-batch
    epochs are reported (:class:`omicsclip.progress.Progress`).
    """
    corrupt_prob = params.corrupt_prob if params.fusion in CORRUPTION_FUSIONS else 0.0
    drop = params.modality_dropout if params.fusion in MULTIMODAL_FUSIONS else 0.0
    use_pool = pool is not None and pool_mask is not None and head.uses_unlabelled and corrupt_prob > 0
    groups = head.param_groups(params.lr)
    decayed = head.decay_parameters()
    if tuner is not None:
        groups.append({"params": list(tuner.parameters()), "lr": params.encoder_lr})
    opt = torch.optim.Adam(groups)
    idx = torch.arange(len(y)).repeat(max(1, math.ceil(_MIN_ROWS / len(y))))
    head.bootstrap(y, gen)
    head.train()
    loss = torch.zeros(())

    def current_loss() -> float:
        return float(loss.detach())

    reporter = Progress(params.epochs, f"finetune {params.fusion} head", "epoch", logger=log, enabled=progress,
                        rate_scale=len(idx), rate_unit="cells")
    with reporter:
        for _ in range(params.epochs):
            zr, zp = labelled()
            a_r, a_p, a_m, corrupted = augment(zr[idx], zp[idx], mask[idx], modality_dropout=drop,
                                               corrupt_prob=corrupt_prob, generator=gen)
            loss = head.loss(head(a_r, a_p, a_m), y[idx], a_m, corrupted, idx)
            if use_pool:
                pi = torch.randint(0, len(pool_mask), (_MIN_ROWS,), generator=gen)
                c_r, c_p = pool(pi)
                u_r, u_p, u_m, u_c = augment(c_r, c_p, pool_mask[pi], modality_dropout=drop,
                                             corrupt_prob=corrupt_prob, generator=gen)
                loss = loss + head.unlabelled_loss((c_r, c_p), (u_r, u_p), u_m, u_c)
            if params.weight_decay > 0:  # logistic-regression style: C = 1 / weight_decay on the summed loss
                loss = loss + 0.5 * params.weight_decay / len(y) * sum((p * p).sum() for p in decayed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            reporter.update(1, loss=current_loss)
    head.eval()
    return float(loss.detach())


def fit_head(
    z_rna: np.ndarray,
    z_prot: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    params: HeadParams,
    *,
    mask: np.ndarray | None = None,
    unlabelled: tuple[np.ndarray, np.ndarray] | None = None,
    unlabelled_mask: np.ndarray | None = None,
    progress: bool = False,
) -> FusionHead:
    """Train the head ``params.fusion`` on frozen labelled embeddings (full batch, Adam + L2 penalty, seeded).

    Parameters
    ----------
    z_rna, z_prot
        (n, d) embeddings of the labelled cells (rows of an absent modality may hold anything, NaN included).
    y
        (n,) integer classes in ``[0, n_classes)``.
    n_classes
        Number of classes.
    params
        Head and training hyper-parameters.
    mask
        (n, 2) presence mask (default: from finiteness of the rows); values in (0, 1) are a modality of reduced
        reliability (:func:`omicsclip.heads.inputs.reliability_mask`).
    unlabelled, unlabelled_mask
        Optional (z_rna, z_prot) of unlabelled cells (training split; labels never used) and their mask. The gated
        and uncertainty heads use them, augmented, to learn what a corrupted modality looks like (gate
        supervision / variance branch with pseudo-labels).
    progress
        Report the training epochs (:class:`omicsclip.progress.Progress`; off for the many small fits of the
        few-label evaluation).

    Returns
    -------
    FusionHead
        The trained head, in eval mode.
    """
    y = np.asarray(y)
    mask = presence_mask(z_rna, z_prot) if mask is None else np.asarray(mask, np.float32)
    _check_fit_inputs(y, n_classes, mask, params.fusion)
    zr, zp = as_tensor(np.nan_to_num(z_rna)), as_tensor(np.nan_to_num(z_prot))
    pool = pool_mask = None
    if unlabelled is not None and len(unlabelled[0]):
        pr, pp = as_tensor(np.nan_to_num(unlabelled[0])), as_tensor(np.nan_to_num(unlabelled[1]))
        pool_mask = as_tensor(presence_mask(*unlabelled) if unlabelled_mask is None else unlabelled_mask)

        def pool(pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return pr[pi], pp[pi]

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(params.seed)
        head = build_head(params.fusion, zr.shape[1], zp.shape[1], n_classes, kind=params.head,
                          hidden=params.hidden, dropout=params.dropout, tensor_rank=params.tensor_rank, members=params.ensemble)
        last = _train(head, params, torch.as_tensor(y, dtype=torch.long), as_tensor(mask), lambda: (zr, zp),
                      pool, pool_mask, torch.Generator().manual_seed(params.seed), progress=progress)
        if isinstance(head, BootstrapMixin):  # post-hoc, on out-of-bag predictions of the labelled cells
            calibrate_out_of_bag(head, zr, zp, torch.as_tensor(y, dtype=torch.long), as_tensor(mask),
                                 params.mc_samples)
    log.debug("fitted %s head on %d cells in %.2fs (final loss %.4f)", params.fusion, len(y),
              time.perf_counter() - t0, last)
    return head


def fit_head_with_encoders(
    h_rna: np.ndarray,
    h_prot: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    params: HeadParams,
    tuner: LastLayerTuner,
    *,
    mask: np.ndarray | None = None,
    unlabelled: tuple[np.ndarray, np.ndarray] | None = None,
    unlabelled_mask: np.ndarray | None = None,
    progress: bool = False,
) -> FusionHead:
    """Train a head as :func:`fit_head` does, also fine-tuning the encoders' last layers.

    The layers are ``tuner``'s (learning rate ``params.encoder_lr``); the inputs are their frozen penultimate
    features ``h_rna``/``h_prot`` (and ``unlabelled``'s), not embeddings. No post-hoc calibration: the tuned
    layers saw every labelled cell, so no prediction is out-of-bag.

    Parameters
    ----------
    h_rna, h_prot
        (n, h) penultimate features of the labelled cells (:func:`omicsclip.heads.tuning.penultimate_features`).
    y, n_classes, params
        As :func:`fit_head`.
    tuner
        The trainable last layers, trained in place.
    mask
        (n, 2) presence mask (default: both present).
    unlabelled, unlabelled_mask
        Penultimate features of unlabelled training cells and their mask, as in :func:`fit_head`.
    progress
        Report the training epochs, as in :func:`fit_head`.
    """
    y = np.asarray(y)
    mask = np.ones((len(y), 2), np.float32) if mask is None else np.asarray(mask, np.float32)
    _check_fit_inputs(y, n_classes, mask, params.fusion)
    hr, hp = as_tensor(h_rna), as_tensor(h_prot)
    pool = pool_mask = None
    if unlabelled is not None and len(unlabelled[0]):
        pr, pp = as_tensor(unlabelled[0]), as_tensor(unlabelled[1])
        pool_mask = as_tensor(np.ones((len(pr), 2), np.float32) if unlabelled_mask is None else unlabelled_mask)

        def pool(pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                return tuner(pr[pi], pp[pi])

    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(params.seed)
        head = build_head(params.fusion, tuner.rna.out_features, tuner.prot.out_features, n_classes,
                          kind=params.head, hidden=params.hidden, dropout=params.dropout,
                          tensor_rank=params.tensor_rank, members=params.ensemble)
        tuner.train()
        last = _train(head, params, torch.as_tensor(y, dtype=torch.long), as_tensor(mask),
                      lambda: tuner(hr, hp), pool, pool_mask, torch.Generator().manual_seed(params.seed), tuner,
                      progress=progress)
        tuner.eval()
    # no post-hoc calibration here: the tuned encoder layers saw every labelled cell, so no prediction is out-of-bag
    log.debug("fitted %s head + last encoder layers on %d cells (final loss %.4f)", params.fusion, len(y), last)
    return head
