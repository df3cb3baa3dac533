"""Training checkpoints: atomic writes, safe loads (``weights_only``), and the RNG states that make resumes exact.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` reads it
without unpickling arbitrary objects.
"""

from __future__ import annotations

import logging
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path
from omicsclip.model.statecheck import one_line, shape_mismatch

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


def _refuse(path: Path, reason: str) -> InputError:
    return InputError(f"{path}: not a readable omicsclip checkpoint ({one_line(reason, 120)}); delete it or train "
                      "without --resume")


def _reason(exc: Exception) -> str:
    # a short cause for a failed torch.load, without torch's advice to unpickle with weights_only=False
    text = str(exc)
    if "Unsupported global" in text or "GLOBAL" in text:
        return "it holds pickled Python objects, not only tensors; omicsclip train did not write it"
    if isinstance(exc, EOFError) or "PytorchStreamReader" in text or "zip archive" in text:
        return "empty, truncated or damaged file"
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        return "not a torch checkpoint: damaged, or a file of another kind"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no arbitrary unpickling).

    With ``model`` (a resume), the result is also checked for the keys and types a resume reads (training
    position, model/optimizer/scheduler state, log lines, RNG states) and its model state is compared with
    ``model``'s state dict (names and shapes).

    Parameters
    ----------
    path
        The checkpoint file.
    model
        The freshly built model the checkpoint is to be loaded into (optional).

    Raises
    ------
    InputError
        The file is missing or not a readable checkpoint: one line naming it, never torch's advice to load it with
        ``weights_only=False``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated file, foreign pickle, zip errors: all one refusal
        raise _refuse(path, _reason(exc)) from None
    if not isinstance(ck, dict):
        raise _refuse(path, f"it holds a {type(ck).__name__}, not a training state")
    if model is not None:
        _check_structure(path, ck)
        found = {k: tuple(v.shape) for k, v in ck["model"].items()}
        mismatch = shape_mismatch(found, {k: tuple(v.shape) for k, v in model.state_dict().items()})
        if mismatch:
            raise _refuse(path, f"its model does not match this run's architecture: {mismatch}")
    return ck


_TYPES: dict[str, tuple[type, ...]] = {
    "format": (int,), "fingerprint": (str,), "world_size": (int,), "epoch": (int,), "step_in_epoch": (int,),
    "global_step": (int,), "model": (dict,), "optimizer": (dict,), "scheduler": (dict,), "early_stopping": (dict,),
    "ema": (dict, type(None)), "loss_sum": (torch.Tensor,), "log": (list,), "rng": (list,),
}


def _check_structure(path: Path, ck: dict[str, Any]) -> None:
    missing = [k for k in _TYPES if k not in ck]
    if missing:
        raise _refuse(path, f"no {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}")
    for key, types in _TYPES.items():
        if not isinstance(ck[key], types) or isinstance(ck[key], bool):
            raise _refuse(path, f"{key} is a {type(ck[key]).__name__}")
    for key in ("world_size", "epoch", "step_in_epoch", "global_step"):
        if ck[key] < (1 if key == "world_size" else 0):
            raise _refuse(path, f"{key} is {ck[key]}")
    if not all(isinstance(v, torch.Tensor) for v in ck["model"].values()):
        raise _refuse(path, "its model state holds values that are not tensors")
    if not all(isinstance(x, str) for x in ck["log"]):
        raise _refuse(path, "its log holds values that are not text")
    if len(ck["rng"]) != ck["world_size"] or not all(isinstance(r, dict) for r in ck["rng"]):
        raise _refuse(path, f"it holds {len(ck['rng'])} RNG states for {ck['world_size']} processes")
    need = ("torch", "cuda", "numpy", "python", "generator")
    for r in ck["rng"]:
        if any(k not in r for k in need) or not isinstance(r["numpy"], dict) or not isinstance(r["python"], dict):
            raise _refuse(path, "its RNG states are incomplete")


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
