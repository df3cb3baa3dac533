"""Dual encoders: one MLP per modality projecting into a shared, L2-normalised embedding space (torch only).

With ``members = K > 1`` each encoder holds K independent MLPs (a deep ensemble trained side by side on the same
batches, each with its own contrastive loss); their L2-normalised outputs are concatenated and divided by
``sqrt(K)``, so the embedding is still unit-norm and the cosine similarity of two embeddings is the mean of the
members' cosine similarities. The K members run as batched matrix products (one GEMM per layer), not a loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import omicsclip.model.randbits as randbits


def normalize_members(x: torch.Tensor, members: int) -> torch.Tensor:
    """L2-normalise each member's slice of ``x`` (cells x members*d), then scale by ``1/sqrt(members)``.

    The result has unit norm; with ``members == 1`` it is plain L2 normalisation.
    """
    if members == 1:
        return F.normalize(x, dim=-1)
    n, width = x.shape
    return (F.normalize(x.reshape(n, members, width // members), dim=-1) / math.sqrt(members)).reshape(n, width)


class MaskDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with its keep mask drawn from 15-bit uniform integers on the CPU.

    ``nn.Dropout`` on the CPU draws its mask with ``bernoulli_`` (~6 ns an element), ``torch.rand`` would take ~3;
    :func:`omicsclip.model.randbits.uniform_ints` takes ~1. The drop probability used is ``p`` rounded to a
    multiple of ``2**-15`` (0.2 -> 0.20001), survivors are scaled by ``1 / (1 - that)``, so the expected output is
    still the input. On other devices, in eval mode and for ``p`` of 0 or 1 this is ``nn.Dropout`` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)`` (training only)."""
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0:
            return super().forward(x)
        n_drop = round(self.p * randbits.SCALE)  # uniform integers below this are dropped
        if not 0 < n_drop < randbits.SCALE:
            return super().forward(x)
        keep = randbits.uniform_ints(x.numel()).view(x.shape) >= n_drop
        return x * keep.to(x.dtype).mul_(randbits.SCALE / (randbits.SCALE - n_drop))


class MemberLinear(nn.Module):
    """``members`` independent linear maps evaluated together.

    Input: cells x ``n_in`` shared by all members (``shared_input``, the first layer) or cells x ``members*n_in``
    (member blocks side by side); output: cells x ``members*n_out``. Initialised like :class:`torch.nn.Linear`.
    Takes 2-D input only (cells x features).
    """

    member_dims = 1  # leading parameter dimension that indexes members (weight decay: see trainer._param_groups)

    def __init__(self, members: int, n_in: int, n_out: int, *, shared_input: bool) -> None:
        super().__init__()
        self.members, self.n_in, self.n_out, self.shared_input = members, n_in, n_out, shared_input
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, n_out).uniform_(-bound, bound))

    @property
    def in_features(self) -> int:
        """Width of the input (``n_in``, or ``members * n_in`` for member blocks)."""
        return self.n_in if self.shared_input else self.members * self.n_in

    @property
    def out_features(self) -> int:
        """Width of the output (``members * n_out``)."""
        return self.members * self.n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every member's map: cells x ``in_features`` -> cells x ``out_features``."""
        n = x.shape[0]
        if self.shared_input:  # one GEMM: cells x n_in @ n_in x (members*n_out)
            w = self.weight.permute(1, 0, 2).reshape(self.n_in, -1)
            return torch.addmm(self.bias.reshape(-1), x, w)
        xk = x.reshape(n, self.members, self.n_in).transpose(0, 1)  # members x cells x n_in
        y = torch.baddbmm(self.bias[:, None, :], xk, self.weight)
        return y.transpose(0, 1).reshape(n, self.members * self.n_out)

    def forward_stacked(self, x: torch.Tensor) -> torch.Tensor:
        """Apply :meth:`forward`'s maps to member-major activations (one batched product, no transposed copy).

        Members x cells x ``n_in`` (or the shared cells x ``n_in``) -> members x cells x ``n_out``.
        """
        if self.shared_input:
            x = x.expand(self.members, *x.shape)
        return torch.baddbmm(self.bias[:, None, :], x, self.weight)


class MemberLayerNorm(nn.Module):
    """LayerNorm over each member's block of ``width`` features, with per-member gain and shift."""

    member_dims = 1

    def __init__(self, members: int, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.members, self.width, self.eps = members, width, eps
        self.weight = nn.Parameter(torch.ones(members, width))
        self.bias = nn.Parameter(torch.zeros(members, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each member's block of cells x ``members * width`` input."""
        n = x.shape[0]
        y = F.layer_norm(x.reshape(n, self.members, self.width), (self.width,), eps=self.eps)
        # back to the input dtype (bf16 under autocast), as nn.LayerNorm does
        return torch.addcmul(self.bias, y, self.weight).to(x.dtype).reshape(n, self.members * self.width)

    def forward_stacked(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise member-major activations (members x cells x ``width``) as :meth:`forward` does."""
        y = F.layer_norm(x, (self.width,), eps=self.eps)
        return torch.addcmul(self.bias[:, None, :], y, self.weight[:, None, :]).to(x.dtype)


class MLPEncoder(nn.Module):
    """Input dropout, then ``Linear -> LayerNorm -> GELU -> Dropout`` per hidden layer, then a linear projection.

    Parameters
    ----------
    n_in
        Number of input features.
    hidden
        Widths of the hidden layers (may be empty: a linear encoder).
    embed_dim
        Width of the projection (the shared space), per member.
    dropout
        Dropout after every hidden layer.
    input_dropout
        Dropout on the input features.
    members
        Independent MLPs evaluated side by side (an ensemble); the output is cells x ``members*embed_dim``
        (member blocks side by side), the body's output cells x ``members*hidden[-1]``.
    """

    def __init__(self, n_in: int, hidden: Sequence[int], embed_dim: int, *, dropout: float = 0.0,
                 input_dropout: float = 0.0, members: int = 1) -> None:
        super().__init__()
        if members < 1:
            raise ValueError("members must be >= 1")
        self.n_in = int(n_in)
        self.members = int(members)
        layers: list[nn.Module] = [MaskDropout(input_dropout)] if input_dropout > 0 else []
        width = n_in
        for i, h in enumerate(hidden):
            if members == 1:
                layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU()]
            else:
                layers += [MemberLinear(members, width, h, shared_input=i == 0), MemberLayerNorm(members, h),
                           nn.GELU()]
            if dropout > 0:
                layers.append(MaskDropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.proj = (nn.Linear(width, embed_dim) if members == 1
                     else MemberLinear(members, width, embed_dim, shared_input=not hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised projection (cells x members*embed_dim).

        An ensemble runs member-major (members x cells x width) from the first layer to the projection: the same
        maps as ``self.proj(self.body(x))`` without a transposed copy of the activations per member layer.
        """
        if self.members == 1 or not isinstance(self.proj, MemberLinear):
            return self.proj(self.body(x))
        h = x
        for layer in self.body:
            h = layer.forward_stacked(h) if isinstance(layer, MemberLinear | MemberLayerNorm) else layer(h)
        y = self.proj.forward_stacked(h)  # members x cells x embed_dim
        return y.transpose(0, 1).reshape(x.shape[0], self.proj.out_features)


class DualEncoder(nn.Module):
    """RNA and protein encoders plus the temperature of the contrastive loss.

    The temperature is stored as ``logit_scale = log(1 / T)`` (open_clip style): a trainable parameter when
    ``learnable_temperature``, a buffer otherwise; :meth:`forward` returns it clamped to
    ``[log(1/temperature_max), log(1/temperature_min)]``.

    Parameters
    ----------
    n_genes, n_proteins
        Input widths.
    rna_hidden, prot_hidden
        Hidden widths of each encoder.
    embed_dim
        Dimension of the shared space (per member: the embedding is ``members * embed_dim`` wide).
    dropout, input_dropout
        See :class:`MLPEncoder`.
    temperature
        Initial (or fixed) softmax temperature.
    learnable_temperature
        Train the temperature with the rest of the model.
    temperature_min, temperature_max
        Clamp of a learnable temperature.
    members
        Ensemble members per encoder (see the module docstring); the loss must be told the same number
        (:class:`omicsclip.model.loss.ClipLoss`).
    """

    def __init__(self, n_genes: int, n_proteins: int, *, rna_hidden: Sequence[int], prot_hidden: Sequence[int],
                 embed_dim: int, dropout: float, input_dropout: float, temperature: float,
                 learnable_temperature: bool, temperature_min: float, temperature_max: float, members: int) -> None:
        super().__init__()
        if not 0 < temperature_min <= temperature <= temperature_max:
            raise ValueError("need 0 < temperature_min <= temperature <= temperature_max")
        self.members = int(members)
        self.rna = MLPEncoder(n_genes, rna_hidden, embed_dim, dropout=dropout, input_dropout=input_dropout,
                              members=members)
        self.prot = MLPEncoder(n_proteins, prot_hidden, embed_dim, dropout=dropout, input_dropout=input_dropout,
                               members=members)
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.scale_min = math.log(1.0 / temperature_max)
        self.scale_max = math.log(1.0 / temperature_min)

    def encode_rna(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised RNA embeddings."""
        return normalize_members(self.rna(x).float(), self.members)

    def encode_prot(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised protein embeddings."""
        return normalize_members(self.prot(x).float(), self.members)

    def clamped_logit_scale(self) -> torch.Tensor:
        """``log(1/T)`` within the configured clamp."""
        return self.logit_scale.clamp(self.scale_min, self.scale_max)

    @property
    def temperature(self) -> float:
        """Current softmax temperature."""
        return float(torch.exp(-self.clamped_logit_scale().detach()))

    def forward(self, rna: torch.Tensor, prot: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"rna_features", "prot_features", "logit_scale"}``; feed it to the loss as ``loss(**out)``."""
        return {
            "rna_features": self.encode_rna(rna),
            "prot_features": self.encode_prot(prot),
            "logit_scale": self.clamped_logit_scale(),
        }


def build_model(n_genes: int, n_proteins: int, model_section: dict[str, Any],
                train_section: dict[str, Any]) -> DualEncoder:
    """Build a :class:`DualEncoder` from the validated ``model`` and ``train`` config sections.

    Parameters
    ----------
    n_genes, n_proteins
        Input widths (the preprocessed RNA and protein inputs).
    model_section
        The ``model`` section: ``rna_hidden``, ``prot_hidden``, ``embed_dim``, ``dropout``, ``input_dropout``,
        ``members``.
    train_section
        The ``train`` section: ``temperature``, ``learnable_temperature``, ``temperature_min``,
        ``temperature_max``.

    Returns
    -------
    DualEncoder
        A freshly initialised model (on the CPU).
    """
    return DualEncoder(
        n_genes, n_proteins,
        rna_hidden=list(model_section["rna_hidden"]),
        prot_hidden=list(model_section["prot_hidden"]),
        embed_dim=int(model_section["embed_dim"]),
        dropout=float(model_section["dropout"]),
        input_dropout=float(model_section["input_dropout"]),
        temperature=float(train_section["temperature"]),
        learnable_temperature=bool(train_section["learnable_temperature"]),
        temperature_min=float(train_section["temperature_min"]),
        temperature_max=float(train_section["temperature_max"]),
        members=int(model_section["members"]),
    )
