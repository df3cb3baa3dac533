"""A head on disk: ``head.safetensors`` and ``head.json`` in a folder; no pickle.

``head.safetensors`` holds the weights, plus any fine-tuned encoder layers; ``head.json`` the format, architecture,
hyper-parameters, classes, model fingerprint and metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from omicsclip.errors import InputError
from omicsclip.heads.base import FusionHead
from omicsclip.heads.fusion import build_head
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import read_json_object, write_json

HEAD_FORMAT = "omicsclip-head"
HEAD_FORMAT_VERSION = 1


def save_head(
    head_dir: str | Path,
    head: FusionHead,
    meta: dict[str, Any],
    *,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a head folder atomically: ``head.safetensors`` (weights and ``extra_tensors``) and ``head.json``.

    Parameters
    ----------
    head_dir
        The new folder.
    head
        The trained head.
    meta
        What ``head.json`` records besides the format and architecture: ``params`` (the ``finetune:`` section
        it was trained with), ``classes``, ``model_fingerprint``, metrics, ...
    extra_tensors
        Tensors saved next to the weights, e.g. fine-tuned encoder layers (``encoder.*``).
    overwrite
        Replace an existing ``head_dir``.
    """
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    arch = {"fusion": head.fusion, "d_rna": head.d_rna, "d_prot": head.d_prot, "n_classes": head.n_classes}
    doc = {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "architecture": arch, **meta}
    with atomic_path(head_dir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "head.safetensors"))
        write_json(tmp / "head.json", doc)
    return Path(head_dir)


def load_head(head_dir: str | Path) -> tuple[FusionHead, dict[str, Any], dict[str, torch.Tensor]]:
    """Rebuild a saved head (eval mode). Returns ``(head, meta, extra_tensors)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    head_dir = Path(head_dir)
    meta_path, w_path = head_dir / "head.json", head_dir / "head.safetensors"
    for p in (meta_path, w_path):
        if not p.exists():
            raise InputError(f"{head_dir}: not a head folder ({p.name} missing)")
    meta = read_json_object(meta_path)
    if meta.get("format") != HEAD_FORMAT:
        raise InputError(f"{meta_path}: not an omicsclip head (format {meta.get('format')!r})")
    try:
        arch, hp = meta["architecture"], meta["params"]
        head = build_head(arch["fusion"], arch["d_rna"], arch["d_prot"], arch["n_classes"], kind=hp["head"],
                          hidden=hp["hidden"], dropout=hp["dropout"], tensor_rank=hp["tensor_rank"],
                          members=hp["ensemble"])
        if not isinstance(meta["classes"], list) or len(meta["classes"]) != int(arch["n_classes"]):
            raise ValueError(f"'classes' must list the {arch['n_classes']} class names")
        int(hp["mc_samples"]), int(hp["seed"])  # used by predict
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{meta_path}: invalid head description ({type(exc).__name__}: {exc})") from None
    try:
        tensors = load_file(str(w_path))
    except SafetensorError as exc:
        raise InputError(f"{w_path}: unreadable weights ({exc})") from None
    state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    if "beta" in head.state_dict() and "beta" not in state:  # saved before calibration existed: uncalibrated
        state["beta"] = torch.ones(())
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{w_path}: weights do not match head.json ({str(exc).splitlines()[0]})") from None
    head.eval()
    extra = {k: v for k, v in tensors.items() if not k.startswith("head.")}
    return head, meta, extra


def check_fingerprint(meta: dict[str, Any], model_fingerprint: str, *, head_dir: str | Path) -> None:
    """Refuse a head trained on another model's embedding."""
    expected = meta.get("model_fingerprint")
    if not expected:
        raise InputError(f"{head_dir}: head.json has no model_fingerprint; cannot check it matches the model")
    if str(expected) != str(model_fingerprint):
        raise InputError(f"{head_dir}: head was trained on embeddings of model {expected}, "
                         f"but the model given is {model_fingerprint}; re-run finetune on this model's embedding")
