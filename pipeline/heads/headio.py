"""A head on disk: ``head.safetensors`` and ``head.json`` in a folder; no pickle.

``head.safetensors`` holds the weights, plus any fine-tuned encoder layers; ``head.json`` the format, architecture,
hyper-parameters, classes, model fingerprint and metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from omicsclip.errors import InputError
from omicsclip.heads.base import FUSIONS, HEAD_KINDS, FusionHead
from omicsclip.heads.fusion import build_head
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import read_json_object, write_json
from omicsclip.model.statecheck import (
    MAX_MEMBERS,
    Fields,
    meta_shapes,
    one_line,
    shape_mismatch,
    show,
    weight_shapes,
)

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


MAX_MC_SAMPLES = 100_000  # params.mc_samples above this is refused (predict would run that many passes)


def check_head_meta(meta_path: str | Path, meta: dict[str, Any]) -> None:
    """Validate a ``head.json`` by key: format, architecture, hyper-parameters, classes, model fingerprint.

    Parameters
    ----------
    meta_path
        The ``head.json`` (named in refusals).
    meta
        Its content.

    Raises
    ------
    InputError
        One line naming the file and the key.
    """
    f = Fields(meta_path, meta, lead="invalid head description: ")
    if meta.get("format") != HEAD_FORMAT:
        raise InputError(f"{meta_path}: not an omicsclip head (format {show(meta.get('format'))})")
    f.integer("format_version", HEAD_FORMAT_VERSION, HEAD_FORMAT_VERSION)
    arch = f.sub("architecture")
    arch.text("fusion", FUSIONS)
    arch.integer("d_rna", 1)
    arch.integer("d_prot", 1)
    n_classes = arch.integer("n_classes", 1)
    hp = f.sub("params")
    hp.text("head", HEAD_KINDS)
    hp.integer("hidden", 1)
    hp.number("dropout", 0, 1, open_hi=True)
    hp.integer("tensor_rank", 1)
    hp.integer("ensemble", 1, MAX_MEMBERS)
    hp.integer("mc_samples", 1, MAX_MC_SAMPLES)
    hp.integer("seed", 0, 2**62)
    classes = f.names("classes")
    if len(classes) != n_classes:
        raise f.fail("classes", f"lists {len(classes)} class names for architecture.n_classes = {n_classes}")
    f.text("model_fingerprint")


def load_head(head_dir: str | Path) -> tuple[FusionHead, dict[str, Any], dict[str, torch.Tensor]]:
    """Rebuild a saved head (eval mode). Returns ``(head, meta, extra_tensors)``.

    ``head.json`` is validated by key (:func:`check_head_meta`) and the head it describes is compared with the
    ``head.*`` tensors of ``head.safetensors`` (names and shapes, from the file's header) before it is built.

    Raises
    ------
    InputError
        A missing, damaged or inconsistent file: one line naming it.
    """
    from safetensors.torch import load_file

    head_dir = Path(head_dir)
    meta_path, w_path = head_dir / "head.json", head_dir / "head.safetensors"
    for p in (meta_path, w_path):
        if not p.exists():
            raise InputError(f"{head_dir}: not a head folder ({p.name} missing)")
    meta = read_json_object(meta_path)
    check_head_meta(meta_path, meta)
    arch, hp = meta["architecture"], meta["params"]

    def build() -> FusionHead:
        return build_head(arch["fusion"], arch["d_rna"], arch["d_prot"], arch["n_classes"], kind=hp["head"],
                          hidden=hp["hidden"], dropout=hp["dropout"], tensor_rank=hp["tensor_rank"],
                          members=hp["ensemble"])

    try:
        expected = meta_shapes(build)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{meta_path}: invalid head description ({one_line(exc, 100)})") from None
    found = {k[len("head."):]: v for k, v in weight_shapes(w_path, what="re-run omicsclip finetune").items()
             if k.startswith("head.")}
    legacy = "beta" in expected and "beta" not in found  # saved before calibration existed: uncalibrated
    if legacy:
        found["beta"] = expected["beta"]
    mismatch = shape_mismatch(found, expected)
    if mismatch:
        raise InputError(f"{meta_path}: architecture does not match head.safetensors ({mismatch})")
    head = build()
    try:
        tensors = load_file(str(w_path))
        state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
        if legacy:
            state["beta"] = torch.ones(())
        head.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type, dtype conversions
        raise InputError(f"{w_path}: weights do not fit head.json ({one_line(exc, 100)})") from None
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
