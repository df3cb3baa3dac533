"""The few-label classification heads, one per fusion strategy, and :func:`build_head` (torch only).

Strategies: ``early`` (one classifier on [z_rna, z_prot, mask]); ``late`` (one classifier per modality,
probabilities averaged); ``gated`` (per-modality bootstrap-ensemble experts mixed by a per-cell gate network);
``uncertainty`` (heteroscedastic per-modality heads, inverse-variance fusion of their logits); ``tensor``
(low-rank multimodal fusion, Liu et al. 2018); ``rna`` / ``prot`` (single-modality baselines).

Each head uses the presence mask explicitly: learned "missing" tokens plus mask features (early), masked averages
(late), a masked softmax gate (gated), masked inverse-variance weights (uncertainty), the LMF appended-1 unimodal
terms (tensor). A soft mask value (a degraded protein panel) scales that modality's weight in the late, gated and
uncertainty heads (:func:`~omicsclip.heads.base.masked_log_weights`). The interface they share is :class:`omicsclip.heads.base.FusionHead`; the gated and uncertainty
heads live in :mod:`omicsclip.heads.ensemble`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omicsclip.conventions import MODALITIES
from omicsclip.heads.base import (
    FUSIONS,
    FusionHead,
    fill_absent,
    make_classifier,
    masked_log_weights,
    mix_experts,
    nan_weights,
)
from omicsclip.heads.ensemble import GatedFusionHead, UncertaintyFusionHead


class SingleModalityHead(FusionHead):
    """Classifier on one modality; cells without it get a uniform prediction (callers refuse them)."""

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, modality: str, kind: str,
                 hidden: int, dropout: float) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.fusion = modality
        self.m = MODALITIES.index(modality)
        self.clf = make_classifier((d_rna, d_prot)[self.m], n_classes, kind, hidden, dropout)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        """Return the head's outputs (see :mod:`omicsclip.heads.base`) for one pass."""
        x = self._inputs(z_rna, z_prot, mask)[self.m]
        lp = torch.log_softmax(self.clf(x), dim=1)
        present = mask[:, self.m] > 0
        lp = torch.where(present[:, None], lp, torch.full_like(lp, -math.log(self.n_classes)))
        w = torch.zeros(len(x), 2, dtype=lp.dtype, device=lp.device)
        w[:, self.m] = present.to(lp.dtype)
        return {"log_probs": lp, "weights": w}

    def loss(self, out: dict, y: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor,
             cells: torch.Tensor | None = None) -> torch.Tensor:
        """Return the cross-entropy of the head's classifier(s) on the cells that have their modality."""
        use = mask[:, self.m] > 0
        if not use.any():
            return out["log_probs"].sum() * 0.0
        return F.nll_loss(out["log_probs"][use], y[use])


class EarlyFusionHead(FusionHead):
    """One classifier on [RNA, protein, mask]; a missing modality is replaced by a learned token."""

    fusion = "early"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str, hidden: int,
                 dropout: float) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        self.missing_rna = nn.Parameter(torch.zeros(d_rna))
        self.missing_prot = nn.Parameter(torch.zeros(d_prot))
        self.clf = make_classifier(d_rna + d_prot + 2, n_classes, kind, hidden, dropout)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        """Return the head's outputs (see :mod:`omicsclip.heads.base`) for one pass."""
        xr = fill_absent(z_rna * self.scale[0], mask[:, 0], self.missing_rna)
        xp = fill_absent(z_prot * self.scale[1], mask[:, 1], self.missing_prot)
        logits = self.clf(torch.cat([xr, xp, mask], dim=1))
        return {"log_probs": torch.log_softmax(logits, dim=1), "weights": nan_weights(len(xr), logits)}


class _ExpertsMixin:
    """Per-modality expert classifiers shared by the late, gated and uncertainty heads."""

    def _make_experts(self, n_classes: int, kind: str, hidden: int, dropout: float) -> None:
        self.experts = nn.ModuleList(
            [make_classifier(d, n_classes, kind, hidden, dropout) for d in (self.d_rna, self.d_prot)]
        )

    def _expert_log_probs(self, xr: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.log_softmax(self.experts[i](x), dim=1) for i, x in enumerate((xr, xp))], dim=1)


class LateFusionHead(_ExpertsMixin, FusionHead):
    """One classifier per modality trained on its own; class probabilities averaged over present modalities."""

    fusion = "late"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str, hidden: int,
                 dropout: float) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        self._make_experts(n_classes, kind, hidden, dropout)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        """Return the head's outputs (see :mod:`omicsclip.heads.base`) for one pass."""
        xr, xp = self._inputs(z_rna, z_prot, mask)
        elp = self._expert_log_probs(xr, xp)
        logw = masked_log_weights(torch.zeros_like(mask), mask)
        return {"log_probs": mix_experts(elp, logw), "weights": logw.exp(), "expert_log_probs": elp}

    def loss(self, out: dict, y: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor,
             cells: torch.Tensor | None = None) -> torch.Tensor:
        """Return the cross-entropy of the head's classifier(s) on the cells that have their modality."""
        return self._expert_loss(out, y, mask, corrupted)


class TensorFusionHead(FusionHead):
    """Low-rank multimodal fusion (Liu et al. 2018, LMF): rank-r factorised outer product of [z_rna, 1], [z_prot, 1].

    h = sum_i w_i (z_rna' W_rna^(i)) * (z_prot' W_prot^(i)) + b, then a classifier on h. The appended 1s keep the
    unimodal terms, so a missing modality (mask 0, its vector set to 0 by design) leaves the other modality's
    unimodal term; training with modality dropout teaches that term to predict alone.
    """

    fusion = "tensor"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str, hidden: int,
                 dropout: float, rank: int) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        self.rank = int(rank)
        self.factor_rna = nn.Parameter(torch.empty(rank, d_rna + 1, hidden))
        self.factor_prot = nn.Parameter(torch.empty(rank, d_prot + 1, hidden))
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.zeros(hidden))
        for p in (self.factor_rna, self.factor_prot, self.rank_weights):
            nn.init.xavier_normal_(p)
        self.clf = make_classifier(hidden, n_classes, kind, hidden, dropout)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        """Return the head's outputs (see :mod:`omicsclip.heads.base`) for one pass."""
        xr, xp = self._inputs(z_rna, z_prot, mask)
        ones = xr.new_ones(len(xr), 1)
        fr = torch.einsum("nd,rdh->rnh", torch.cat([xr, ones], 1), self.factor_rna)
        fp = torch.einsum("nd,rdh->rnh", torch.cat([xp, ones], 1), self.factor_prot)
        h = torch.einsum("r,rnh->nh", self.rank_weights[0], fr * fp) + self.fusion_bias
        logits = self.clf(h)
        return {"log_probs": torch.log_softmax(logits, dim=1), "weights": nan_weights(len(xr), logits)}


def build_head(fusion: str, d_rna: int, d_prot: int, n_classes: int, *, kind: str, hidden: int,
               dropout: float, tensor_rank: int, members: int) -> FusionHead:
    """Construct the head for ``fusion`` (one of :data:`FUSIONS`).

    Parameters
    ----------
    fusion
        early | late | gated | uncertainty | tensor (multimodal) or rna | prot (single-modality baselines).
    d_rna, d_prot
        Embedding dimensions.
    n_classes
        Number of classes.
    kind
        ``linear`` or ``mlp`` classifiers.
    hidden, dropout, tensor_rank
        MLP width (also the LMF fused width), dropout rate, LMF rank.
    members
        Bootstrap ensemble size of the gated and uncertainty heads' per-modality classifiers.
    """
    common = {"kind": kind, "hidden": hidden, "dropout": dropout}
    if fusion in MODALITIES:
        return SingleModalityHead(d_rna, d_prot, n_classes, modality=fusion, **common)
    if fusion == "early":
        return EarlyFusionHead(d_rna, d_prot, n_classes, **common)
    if fusion == "late":
        return LateFusionHead(d_rna, d_prot, n_classes, **common)
    if fusion == "gated":
        return GatedFusionHead(d_rna, d_prot, n_classes, members=members, **common)
    if fusion == "uncertainty":
        return UncertaintyFusionHead(d_rna, d_prot, n_classes, members=members, **common)
    if fusion == "tensor":
        return TensorFusionHead(d_rna, d_prot, n_classes, rank=tensor_rank, **common)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
