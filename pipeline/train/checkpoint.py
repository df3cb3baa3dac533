"""Training checkpoints: atomic writes, safe loads (``weights_only``), and the RNG states that make resumes exact.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` reads it
without unpickling arbitrary objects.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path

log = logging.getLogger(__name__)

LAST = "last.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous checkpoint intact).

    Parameters
    ----------
    state
        Tensors, numbers, strings, lists and dicts only.
    path
        The checkpoint file.
    """
    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no arbitrary unpickling).

    Parameters
    ----------
    path
        The checkpoint file.

    Raises
    ------
    InputError
        The file is missing or not a readable checkpoint.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # truncated file, foreign pickle
        raise InputError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Capture the RNG states of torch (CPU and CUDA), numpy, python and the augmentation ``generator``.

    Parameters
    ----------
    generator
        The training loop's augmentation generator.

    Returns
    -------
    dict
        Tensors, numbers and lists only (safe for ``torch.load(weights_only=True)``).
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
        "generator": generator.get_state(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore the RNG states captured by :func:`capture_rng` (into ``generator`` and the global RNGs)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    generator.set_state(state["generator"])
