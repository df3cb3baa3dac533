"""Choose the torch device a stage runs on (one rule for training, embedding and queries)."""

from __future__ import annotations

import os

import torch

from omicsclip.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the local GPU (``cuda:LOCAL_RANK`` under torchrun) when available, else the CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"train.device={name}: no CUDA device available (use cpu or auto)")
        dev = torch.device(name if ":" in name else f"cuda:{local}")
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")
