"""Dual encoders: one MLP per modality projecting into a shared, L2-normalised embedding space (torch only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MLPEncoder(nn.Module):
    """Input dropout, then ``Linear -> LayerNorm -> GELU -> Dropout`` per hidden layer, then a linear projection.

    Parameters
    ----------
    n_in
        Number of input features.
    hidden
        Widths of the hidden layers (may be empty: a linear encoder).
    embed_dim
        Width of the projection (the shared space).
    dropout
        Dropout after every hidden layer.
    input_dropout
        Dropout on the input features.
    """

    def __init__(self, n_in: int, hidden: Sequence[int], embed_dim: int, *, dropout: float = 0.0,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        self.n_in = int(n_in)
        layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised projection (cells x embed_dim)."""
        return self.proj(self.body(x))


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
        Dimension of the shared space.
    dropout, input_dropout
        See :class:`MLPEncoder`.
    temperature
        Initial (or fixed) softmax temperature.
    learnable_temperature
        Train the temperature with the rest of the model.
    temperature_min, temperature_max
        Clamp of a learnable temperature.
    """

    def __init__(self, n_genes: int, n_proteins: int, *, rna_hidden: Sequence[int] = (512, 256),
                 prot_hidden: Sequence[int] = (128, 128), embed_dim: int = 64, dropout: float = 0.0,
                 input_dropout: float = 0.0, temperature: float = 0.1, learnable_temperature: bool = False,
                 temperature_min: float = 0.01, temperature_max: float = 1.0) -> None:
        super().__init__()
        if not 0 < temperature_min <= temperature <= temperature_max:
            raise ValueError("need 0 < temperature_min <= temperature <= temperature_max")
        self.rna = MLPEncoder(n_genes, rna_hidden, embed_dim, dropout=dropout, input_dropout=input_dropout)
        self.prot = MLPEncoder(n_proteins, prot_hidden, embed_dim, dropout=dropout, input_dropout=input_dropout)
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.scale_min = math.log(1.0 / temperature_max)
        self.scale_max = math.log(1.0 / temperature_min)

    def encode_rna(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised RNA embeddings."""
        return F.normalize(self.rna(x).float(), dim=-1)

    def encode_prot(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised protein embeddings."""
        return F.normalize(self.prot(x).float(), dim=-1)

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


def build_model(n_genes: int, n_proteins: int, model_cfg: dict, train_cfg: dict) -> DualEncoder:
    """A :class:`DualEncoder` from the ``model`` and ``train`` config sections."""
    return DualEncoder(
        n_genes, n_proteins,
        rna_hidden=list(model_cfg.get("rna_hidden", [512, 256])),
        prot_hidden=list(model_cfg.get("prot_hidden", [128, 128])),
        embed_dim=int(model_cfg.get("embed_dim", 64)),
        dropout=float(model_cfg.get("dropout", 0.0)),
        input_dropout=float(model_cfg.get("input_dropout", 0.0)),
        temperature=float(train_cfg.get("temperature", 0.1)),
        learnable_temperature=bool(train_cfg.get("learnable_temperature", False)),
        temperature_min=float(train_cfg.get("temperature_min", 0.01)),
        temperature_max=float(train_cfg.get("temperature_max", 1.0)),
    )
