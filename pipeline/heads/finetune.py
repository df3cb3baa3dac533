"""Train few-label heads on frozen embeddings, predict with them, save/load them (safetensors + JSON, no pickle).

Array-level API (no files): :func:`fit_head`, :func:`fit_head_with_encoders` (light fine-tuning of the encoders'
last layers), :func:`predict_head`. Files: :func:`read_embedding` (the ``embed`` stage's AnnData zarr),
:func:`save_head` / :func:`load_head`, :func:`finetune_embedding` (the ``finetune`` command) and
:func:`predict_cells` (the ``predict`` command: raw counts of new cells in any ingest format -> TSV).

Training: full-batch Adam on the labelled cells (repeated to >= 256 rows per step, each copy freshly augmented:
modality dropout for the multimodal heads, a modality replaced by a random unit vector for the gated and
uncertainty heads), with an L2 penalty on the classifiers' weights as in logistic regression (C = 1/weight_decay).
The gated and uncertainty heads also see unlabelled TRAINING cells (never their labels, never test cells) with
the same augmentations, to learn what a corrupted modality looks like.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from omicsclip.errors import InputError
from omicsclip.heads.calibration import classification_metrics
from omicsclip.heads.fusion import (
    FUSIONS,
    MODALITIES,
    MULTIMODAL_FUSIONS,
    FusionHead,
    UncertaintyFusionHead,
    as_tensor,
    build_head,
    normalised_entropy,
    random_unit_vectors,
)
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import read_json_object
from omicsclip.model.encoders import normalize_members

log = logging.getLogger(__name__)

OBSM_KEYS = {"rna": "X_omicsclip_rna", "prot": "X_omicsclip_prot"}
HEAD_FORMAT = "omicsclip-head"
HEAD_FORMAT_VERSION = 1
CORRUPTION_FUSIONS = ("gated", "uncertainty")  # heads trained with noise augmentation (they can down-weight it)
_MIN_ROWS = 256  # the labelled set is repeated (with fresh augmentations) to at least this many rows per step
_PREDICT_CHUNK = 8192


@dataclass(frozen=True)
class HeadParams:
    """Hyper-parameters of a head and its training (the ``finetune:`` config section)."""

    fusion: str = "gated"
    head: str = "linear"
    hidden: int = 64
    epochs: int = 300
    lr: float = 0.01
    weight_decay: float = 1.0
    dropout: float = 0.1
    mc_samples: int = 20
    tensor_rank: int = 8
    ensemble: int = 5
    modality_dropout: float = 0.2
    corrupt_prob: float = 0.3
    finetune_encoder: bool = False
    encoder_lr: float = 1e-4
    seed: int = 0

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> HeadParams:
        """Build from a ``finetune:`` config section (unknown keys are ignored; the schema rejects them)."""
        names = {f.name for f in fields(cls)}
        params = cls(**{k: v for k, v in (section or {}).items() if k in names})
        if params.fusion not in FUSIONS:
            raise InputError(f"finetune.fusion: must be one of {', '.join(FUSIONS)}, got {params.fusion!r}")
        return params


# ---------------------------------------------------------------------------------------------- array level


def presence_mask(z_rna: np.ndarray | None, z_prot: np.ndarray | None, n: int | None = None) -> np.ndarray:
    """(n, 2) float32 mask: 1 where a modality's embedding is given and finite, 0 where absent or NaN."""
    n = n if n is not None else len(z_rna if z_rna is not None else z_prot)
    mask = np.zeros((n, 2), np.float32)
    for j, z in enumerate((z_rna, z_prot)):
        if z is not None:
            mask[:, j] = np.isfinite(np.asarray(z)).all(1)
    return mask


def augment(
    z_rna: torch.Tensor,
    z_prot: torch.Tensor,
    mask: torch.Tensor,
    *,
    modality_dropout: float,
    corrupt_prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Modality dropout (mask a modality) and corruption (replace it by a random unit vector, mask still 1).

    Only cells with both modalities are augmented; each gets at most one change, to a modality chosen at random.
    Returns the new ``z_rna``, ``z_prot``, ``mask`` and ``corrupted`` (n, 2 bool).
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
        return (normalize_members(self.rna(h_rna), self.members),
                normalize_members(self.prot(h_prot), self.members))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tuned layers as ``encoder.<modality>.proj.<param>`` tensors (saved next to the head weights)."""
        return {f"encoder.{mod}.proj.{k}": v for mod, layer in (("rna", self.rna), ("prot", self.prot))
                for k, v in layer.state_dict().items()}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny-tensor training on one CPU thread: more threads only add synchronisation (on a busy 2-core
    machine a head trained ~20x slower with 2 threads than with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
) -> float:
    """The training loop shared by frozen-embedding heads and last-layer encoder fine-tuning; returns the last loss.

    Each step: the labelled cells, repeated to at least ``_MIN_ROWS`` rows, with fresh augmentations (modality
    dropout for the multimodal heads, noise corruption for the gated/uncertainty heads); plus, for heads that use
    them, ``_MIN_ROWS`` augmented unlabelled pool cells (label-free loss).
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
        (n, 2) presence mask (default: from finiteness of the rows).
    unlabelled, unlabelled_mask
        Optional (z_rna, z_prot) of unlabelled cells (training split; labels never used) and their mask. The gated
        and uncertainty heads use them, augmented, to learn what a corrupted modality looks like (gate
        supervision / variance branch with pseudo-labels).

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
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(params.seed)
        head = build_head(params.fusion, zr.shape[1], zp.shape[1], n_classes, kind=params.head,
                          hidden=params.hidden, dropout=params.dropout, tensor_rank=params.tensor_rank, members=params.ensemble)
        last = _train(head, params, torch.as_tensor(y, dtype=torch.long), as_tensor(mask), lambda: (zr, zp),
                      pool, pool_mask, torch.Generator().manual_seed(params.seed))
        if hasattr(head, "calibrate"):  # post-hoc, on out-of-bag predictions of the labelled cells
            head.calibrate(zr, zp, torch.as_tensor(y, dtype=torch.long), as_tensor(mask), params.mc_samples)
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
) -> FusionHead:
    """Like :func:`fit_head`, also fine-tuning the encoders' last layers (``tuner``, learning rate
    ``params.encoder_lr``) from their frozen penultimate features ``h_rna``/``h_prot`` (and ``unlabelled``'s)."""
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

    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(params.seed)
        head = build_head(params.fusion, tuner.rna.out_features, tuner.prot.out_features, n_classes,
                          kind=params.head, hidden=params.hidden, dropout=params.dropout,
                          tensor_rank=params.tensor_rank, members=params.ensemble)
        tuner.train()
        last = _train(head, params, torch.as_tensor(y, dtype=torch.long), as_tensor(mask),
                      lambda: tuner(hr, hp), pool, pool_mask, torch.Generator().manual_seed(params.seed), tuner)
        tuner.eval()
    # no post-hoc calibration here: the tuned encoder layers saw every labelled cell, so no prediction is out-of-bag
    log.debug("fitted %s head + last encoder layers on %d cells (final loss %.4f)", params.fusion, len(y), last)
    return head


def predict_head(
    head: FusionHead,
    z_rna: np.ndarray | None,
    z_prot: np.ndarray | None,
    *,
    mask: np.ndarray | None = None,
    mc_samples: int = 20,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Class probabilities, per-modality weights and uncertainties for each cell.

    Parameters
    ----------
    head
        A trained head.
    z_rna, z_prot
        (n, d) embeddings, or ``None`` when a modality is absent for every cell.
    mask
        (n, 2) presence mask (default: finiteness of the rows; an absent array means absent for all cells).
    mc_samples
        MC-dropout passes (uncertainty head only).
    seed
        Seed of the MC-dropout and logit-noise sampling.

    Returns
    -------
    dict
        ``probs`` (n, K); ``weights`` (n, 2) (NaN for heads without per-modality weights: early, tensor);
        ``uncertainty`` (n,) normalised entropy of the fused prediction (0 certain .. 1 uniform);
        ``modality_uncertainty`` (n, 2): total predictive variance per modality (uncertainty head) or the
        normalised entropy of each modality's expert (late, gated, single-modality heads); NaN where undefined
        or the modality is absent; ``mask`` (n, 2).
    """
    n = len(z_rna) if z_rna is not None else len(z_prot)
    mask = presence_mask(z_rna, z_prot, n) if mask is None else np.asarray(mask, np.float32)
    zr = np.zeros((n, head.d_rna), np.float32) if z_rna is None else np.nan_to_num(z_rna)
    zp = np.zeros((n, head.d_prot), np.float32) if z_prot is None else np.nan_to_num(z_prot)
    chunks: list[dict[str, np.ndarray]] = []
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(seed)
        for s in range(0, n, _PREDICT_CHUNK):
            sl = slice(s, s + _PREDICT_CHUNK)
            m = as_tensor(mask[sl])
            out = head.predict(as_tensor(zr[sl]), as_tensor(zp[sl]), m, mc_samples=mc_samples)
            if isinstance(head, UncertaintyFusionHead):
                mod_unc = out["modality_var"]
            elif "expert_log_probs" in out:
                mod_unc = normalised_entropy(out["expert_log_probs"])
            else:
                mod_unc = torch.full((len(m), 2), float("nan"))
            if head.fusion in MODALITIES:
                mod_unc = torch.full((len(m), 2), float("nan"))
                mod_unc[:, MODALITIES.index(head.fusion)] = normalised_entropy(out["log_probs"])
            mod_unc = torch.where(m > 0, mod_unc, torch.full_like(mod_unc, float("nan")))
            chunks.append({
                "probs": out["log_probs"].exp().numpy(),
                "weights": out["weights"].numpy(),
                "uncertainty": normalised_entropy(out["log_probs"]).numpy(),
                "modality_uncertainty": mod_unc.numpy(),
            })
    res = {k: np.concatenate([c[k] for c in chunks]) if chunks else np.zeros((0,)) for k in
           ("probs", "weights", "uncertainty", "modality_uncertainty")}
    res["mask"] = mask
    return res


# ---------------------------------------------------------------------------------------------- labels


def label_array(obs: pd.DataFrame, key: str, ignore: tuple[str, ...] | list[str] = (), *, source: str = "") -> np.ndarray:
    """Labels of ``obs[key]`` as an object array, ``None`` where unlabelled (NaN, empty, or in ``ignore``)."""
    if key not in obs.columns:
        cols = ", ".join(map(str, obs.columns)) or "none"
        raise InputError(f"{source}: obs has no label column {key!r} (columns: {cols})")
    raw = obs[key]
    ignore_set = {str(s) for s in ignore}
    out = np.empty(len(raw), dtype=object)
    for i, (v, na) in enumerate(zip(raw.astype(object).to_numpy(), raw.isna().to_numpy(), strict=True)):
        s = "" if na else str(v).strip()
        out[i] = None if (s == "" or s.lower() == "nan" or s in ignore_set) else s
    return out


def sample_per_class(
    labels: np.ndarray, candidates: np.ndarray, n_per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``n_per_class`` labelled cells per class drawn without replacement among ``candidates``.

    A class with fewer candidate cells contributes all of them (logged).
    """
    picked = []
    cand = np.asarray(candidates, bool) & np.array([lab is not None for lab in labels])
    classes = sorted({labels[i] for i in np.flatnonzero(cand)})
    for c in classes:
        pool = np.flatnonzero(cand & (labels == c))
        if len(pool) < n_per_class:
            log.debug("class %r: only %d candidate cells for %d labels per class", c, len(pool), n_per_class)
        picked.append(rng.choice(pool, size=min(n_per_class, len(pool)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------- files


@dataclass
class Embedding:
    """The ``embed`` stage's output in memory."""

    z_rna: np.ndarray
    z_prot: np.ndarray
    mask: np.ndarray
    obs: pd.DataFrame
    fingerprint: str | None
    path: Path

    @property
    def split(self) -> np.ndarray | None:
        return self.obs["split"].astype(str).to_numpy() if "split" in self.obs.columns else None


def read_embedding(path: str | Path) -> Embedding:
    """Open an embedding AnnData zarr (``omicsclip embed`` output): per-modality obsm, obs, model fingerprint."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: embedding file does not exist")
    try:
        adata = ad.read_zarr(path) if path.suffix != ".h5ad" else ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(f"{path}: cannot read as an AnnData zarr ({type(exc).__name__}: {exc})") from None
    zs = []
    for mod, key in OBSM_KEYS.items():
        if key not in adata.obsm:
            raise InputError(f"{path}: obsm[{key!r}] missing (the {mod} embedding); is this an `omicsclip embed` output?")
        zs.append(np.asarray(adata.obsm[key], dtype=np.float32))
    fp = adata.uns.get("omicsclip", {}).get("model_fingerprint") if isinstance(adata.uns.get("omicsclip"), dict) else None
    return Embedding(z_rna=zs[0], z_prot=zs[1], mask=presence_mask(zs[0], zs[1]), obs=adata.obs.copy(),
                     fingerprint=None if fp is None else str(fp), path=path)


def save_head(
    head_dir: str | Path,
    head: FusionHead,
    meta: dict[str, Any],
    *,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``head.safetensors`` (weights, plus ``extra_tensors`` such as fine-tuned encoder layers) and
    ``head.json`` (architecture, classes, model fingerprint, metrics) into a new folder, atomically."""
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    arch = {"fusion": head.fusion, "d_rna": head.d_rna, "d_prot": head.d_prot, "n_classes": head.n_classes}
    doc = {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "architecture": arch, **meta}
    with atomic_path(head_dir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "head.safetensors"))
        (tmp / "head.json").write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
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
                          members=hp.get("ensemble", 5))
        if not isinstance(meta["classes"], list) or len(meta["classes"]) != int(arch["n_classes"]):
            raise ValueError(f"'classes' must list the {arch['n_classes']} class names")
        int(hp.get("mc_samples", 20)), int(hp.get("seed", 0))  # used by predict
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


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


_POOL_MAX = 20_000  # unlabelled training cells used by the gated/uncertainty heads (random subset above this)


def _pool_rows(split: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    rows = np.flatnonzero(split == "train") if split is not None else np.arange(n)
    if len(rows) > _POOL_MAX:
        rows = np.sort(np.random.default_rng(seed).choice(rows, _POOL_MAX, replace=False))
    return rows


def penultimate_features(model: Any, rna: Any, prot: Any, *, genes: list[str], proteins: list[str],
                         batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of the layers below each encoder's projection (frozen), with the model's preprocessing.

    Parameters
    ----------
    model
        A :class:`omicsclip.model.modelio.TrainedModel`.
    rna, prot
        Raw counts (cells x genes CSR, cells x proteins).
    genes, proteins
        Their feature names (matched to the model's by name).
    batch_size
        Cells per forward pass.
    """
    from omicsclip.model.preprocess import align_proteins, align_rna

    counts, lib, rep = align_rna(rna, genes, model.state)
    present = torch.ones(len(model.state.genes))
    if rep.missing:
        present[torch.as_tensor(pd.Index(model.state.genes).get_indexer(rep.missing))] = 0
    pcounts, ppresent, _ = align_proteins(prot, proteins, model.state)
    enc = model.model.eval()
    hr, hp = [], []
    with torch.no_grad():
        for s in range(0, counts.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            xr = model.pre.rna(torch.as_tensor(counts[sl].toarray()), torch.as_tensor(lib[sl]), present)
            xp = model.pre.prot(torch.as_tensor(pcounts[sl]), torch.as_tensor(ppresent))
            hr.append(enc.rna.body(xr).float().numpy())
            hp.append(enc.prot.body(xp).float().numpy())
    return np.concatenate(hr), np.concatenate(hp)


def apply_encoder_layers(model: Any, tensors: dict[str, torch.Tensor]) -> bool:
    """Load fine-tuned last encoder layers (``encoder.*`` tensors of a head) into a loaded model, in place.

    Returns whether any were applied.
    """
    applied = False
    for mod in MODALITIES:
        state = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"encoder.{mod}.proj.")}
        if state:
            try:
                getattr(model.model, mod).proj.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise InputError(f"fine-tuned {mod} encoder layer does not fit the model ({exc})") from None
            applied = True
    return applied


def _fit_with_encoders(store: str | Path | None, model_dir: str | Path | None, emb: Embedding, idx: np.ndarray,
                       y: np.ndarray, n_classes: int, params: HeadParams, eval_rows: np.ndarray,
                       pool_rows: np.ndarray) -> tuple[FusionHead, dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Head + last-layer fine-tuning from the store's raw counts; returns the head, the tuned layers' tensors
    and the tuned embeddings of ``eval_rows`` (``rna``, ``prot``)."""
    from omicsclip.io.store import read_store
    from omicsclip.model.modelio import load_model

    if store is None or model_dir is None:
        raise InputError("finetune.finetune_encoder needs --store STORE and --model MODEL_DIR")
    model = load_model(model_dir)
    if emb.fingerprint is not None and emb.fingerprint != model.fingerprint:
        raise InputError(f"{emb.path}: embedding was made by model {emb.fingerprint}, "
                         f"not by {model_dir} ({model.fingerprint})")
    data = read_store(store)
    rows = np.unique(np.concatenate([idx, eval_rows, pool_rows]))
    pos = pd.Index(data.barcodes).get_indexer([str(b) for b in emb.obs.index[rows]])
    if (pos < 0).any():
        raise InputError(f"{store}: {int((pos < 0).sum())} cells of {emb.path} are not in the store")
    hr, hp = penultimate_features(model, data.rna[pos], data.prot[pos], genes=data.gene_names,
                                  proteins=data.protein_names)
    where = {r: i for i, r in enumerate(rows)}

    def take(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = np.array([where[i] for i in r], dtype=np.int64)
        return hr[k], hp[k]

    tuner = LastLayerTuner(model.model.rna.proj, model.model.prot.proj, model.model.members)
    head = fit_head_with_encoders(*take(idx), y, n_classes, params, tuner,
                                  unlabelled=take(pool_rows) if len(pool_rows) else None)
    with torch.no_grad():
        er, ep = tuner(*(as_tensor(a) for a in take(eval_rows)))
    return head, tuner.tensors(), {"rna": er.numpy(), "prot": ep.numpy()}


def finetune_embedding(
    emb_path: str | Path,
    out: str | Path,
    *,
    label_key: str,
    section: dict[str, Any] | None = None,
    labels_per_class: int | None = None,
    ignore_labels: tuple[str, ...] | list[str] = (),
    seed: int | None = None,
    store: str | Path | None = None,
    model: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The ``finetune`` command: fit a head on an embedding's labelled training cells and save it.

    Labels come from ``obs[label_key]`` (NaN/empty/``ignore_labels`` = unlabelled). Cells of the ``train`` split
    are used (all cells when the file has no ``split`` column); ``labels_per_class`` draws that many per class
    (seeded). Unlabelled training cells serve the gated/uncertainty heads' label-free losses. Labelled
    ``test``-split cells, when present, give accuracy, macro-F1 and ECE in ``metrics``.

    Parameters
    ----------
    emb_path
        Embedding AnnData zarr from ``omicsclip embed``.
    out
        New head folder (``head.safetensors``, ``head.json``).
    label_key
        obs column holding the labels.
    section
        The ``finetune:`` config section.
    labels_per_class
        Sample this many labelled training cells per class instead of using all.
    ignore_labels
        Label values treated as unlabelled (e.g. ``unknown``).
    seed
        Seed of the label draw and the head (default: ``section["seed"]``).
    store, model
        Paired store and model folder; needed only with ``finetune_encoder: true`` (light fine-tuning of the
        encoders' last layers, saved with the head and applied by ``predict``).
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    dict
        The saved ``head.json`` contents.
    """
    from omicsclip.io.atomic import check_writable

    check_writable(Path(out), overwrite=overwrite, inputs=(emb_path, store, model))
    params = HeadParams.from_section(section)
    if seed is not None:
        params = replace(params, seed=int(seed))
    emb = read_embedding(emb_path)
    labels = label_array(emb.obs, label_key, ignore_labels, source=str(emb_path))
    split = emb.split
    if split is not None and not (split == "train").any():  # e.g. cells of another store ("unseen")
        log.warning("%s: no 'train' cells in obs['split']; fitting on all labelled cells, no held-out metrics",
                    emb_path)
        split = None
    fit_cells = (split == "train") if split is not None else np.ones(len(labels), bool)
    if split is None and emb.split is None:
        log.warning("%s: no 'split' column; fitting on all labelled cells, no held-out metrics", emb_path)
    has_label = np.array([lab is not None for lab in labels])
    if labels_per_class is not None:
        if labels_per_class < 1:
            raise InputError(f"--labels-per-class must be >= 1, got {labels_per_class}")
        idx = sample_per_class(labels, fit_cells, labels_per_class, np.random.default_rng(params.seed))
    else:
        idx = np.flatnonzero(fit_cells & has_label)
    if len(idx) == 0:
        raise InputError(f"{emb_path}: no labelled training cells in obs[{label_key!r}]")
    classes = sorted({labels[i] for i in idx})
    if len(classes) < 2:
        raise InputError(f"{emb_path}: obs[{label_key!r}] has fewer than 2 classes among training cells")
    cls_index = {c: i for i, c in enumerate(classes)}
    y = np.array([cls_index[labels[i]] for i in idx])
    test = np.zeros(0, np.int64)
    if split is not None:
        test = np.flatnonzero((split == "test") & np.array([lab in cls_index for lab in labels]))
    pool = _pool_rows(split, len(labels), params.seed)
    log.info("fitting %s head (%s) on %d cells, %d classes%s", params.fusion, params.head, len(idx), len(classes),
             " + last encoder layers" if params.finetune_encoder else "")
    extra: dict[str, torch.Tensor] = {}
    if params.finetune_encoder:
        head, extra, test_emb = _fit_with_encoders(store, model, emb, idx, y, len(classes), params, test, pool)
        z_test = (test_emb["rna"], test_emb["prot"])
    else:
        if store is not None or model is not None:
            log.warning("--store/--model are only used with finetune.finetune_encoder=true; ignored")
        head = fit_head(emb.z_rna[idx], emb.z_prot[idx], y, len(classes), params, mask=emb.mask[idx],
                        unlabelled=(emb.z_rna[pool], emb.z_prot[pool]), unlabelled_mask=emb.mask[pool])
        z_test = (emb.z_rna[test], emb.z_prot[test])
    metrics: dict[str, Any] = {}
    if len(test):
        pred = predict_head(head, *z_test, mask=emb.mask[test], mc_samples=params.mc_samples, seed=params.seed)
        y_test = np.array([cls_index[labels[i]] for i in test])
        metrics = {"split": "test", **classification_metrics(pred["probs"], y_test)}
        log.info("test cells: accuracy %.3f, macro-F1 %.3f, ECE %.3f", metrics["accuracy"], metrics["macro_f1"],
                 metrics["ece"])
    from omicsclip import __version__

    meta = {
        "params": asdict(params),
        "classes": classes,
        "label_key": label_key,
        "ignore_labels": list(ignore_labels),
        "labels_per_class": labels_per_class,
        "n_train_cells": int(len(idx)),
        "n_unlabelled_cells": int(len(pool)) if head.uses_unlabelled else 0,
        "class_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        "model_fingerprint": emb.fingerprint,
        "embedding": str(emb_path),
        "encoder_finetuned": bool(params.finetune_encoder),
        "metrics": metrics,
        "omicsclip_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if emb.fingerprint is None:
        log.warning("%s: no uns['omicsclip']['model_fingerprint']; `predict` will refuse this head", emb_path)
    save_head(out, head, meta, extra_tensors=extra, overwrite=overwrite)
    log.info("wrote %s", out)
    return json.loads((Path(out) / "head.json").read_text())


# ---------------------------------------------------------------------------------------------- predict

_READER_KEYS = ("rna_modality", "prot_modality", "isotype_patterns", "keep_isotypes", "hto_patterns", "pairing",
                "allow_normalized", "make_unique", "genes_in_rows", "protein_key", "layer")


def _reader_options(section: dict[str, Any] | None) -> dict[str, Any]:
    opts = {k: v for k, v in (section or {}).items() if k in _READER_KEYS}
    for key in ("protein_key", "layer"):
        if not opts.get(key):
            opts.pop(key, None)
    return opts


def _has_counts(x: Any, n: int) -> np.ndarray:
    if x is None:
        return np.zeros(n, bool)
    return np.asarray(x.sum(axis=1)).ravel() > 0


def prediction_frame(pred: dict[str, np.ndarray], classes: list[str], barcodes: list[str]) -> pd.DataFrame:
    """The ``predict`` table: one row per cell (see :func:`predict_cells`)."""
    probs, mask = pred["probs"], pred["mask"]
    none = ~(mask > 0).any(1)
    top = probs.argmax(1)
    df = pd.DataFrame({
        "barcode": barcodes,
        "label": np.where(none, "", np.asarray(classes, dtype=object)[top]),
        "probability": np.where(none, np.nan, probs.max(1)),
        "weight_rna": pred["weights"][:, 0],
        "weight_prot": pred["weights"][:, 1],
        "uncertainty": np.where(none, np.nan, pred["uncertainty"]),
        "uncertainty_rna": pred["modality_uncertainty"][:, 0],
        "uncertainty_prot": pred["modality_uncertainty"][:, 1],
        "has_rna": (mask[:, 0] > 0).astype(int),
        "has_prot": (mask[:, 1] > 0).astype(int),
    })
    df.loc[none, ["weight_rna", "weight_prot"]] = np.nan
    return df


def predict_cells(
    inputs: list[str | Path],
    model_dir: str | Path,
    head_dir: str | Path,
    out: str | Path,
    *,
    fmt: str = "auto",
    modality: str | None = None,
    reader: dict[str, Any] | None = None,
    chunk_cells: int = 20_000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The ``predict`` command: label new cells (any ingest format) with a saved head; write a TSV.

    Columns: ``barcode``, ``label`` (empty for a cell with neither modality), ``probability`` (of that label),
    ``weight_rna``/``weight_prot`` (per-modality weights of the fused prediction; NaN for early and tensor heads,
    which have none), ``uncertainty`` (normalised entropy of the prediction, 0..1), ``uncertainty_rna``/
    ``uncertainty_prot`` (per-modality: total predictive variance for the uncertainty head, normalised entropy of
    the modality's expert for the others; NaN where undefined), ``has_rna``/``has_prot`` (the modality was given
    for the cell: present in the input with non-zero counts; an absent modality is masked, not zero-filled).

    Parameters
    ----------
    inputs
        One or two input paths (see :func:`omicsclip.io.readers.open_input`); one modality is enough.
    model_dir
        The model whose embeddings the head was trained on (fingerprints must match, else refused).
    head_dir
        The head folder from ``omicsclip finetune``.
    out
        Output TSV path.
    fmt, modality
        Input format and, for a single-matrix input, which modality it holds.
    reader
        Reader options (the ``ingest:`` config section: modality names, isotype patterns, pairing, ...).
    chunk_cells
        Cells read, embedded and predicted at a time.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    dict
        Summary: ``n_cells``, cells per present-modality pattern, label counts.
    """
    from omicsclip.io.atomic import check_writable
    from omicsclip.io.readers import open_input
    from omicsclip.model.modelio import load_model

    out = Path(out)
    check_writable(out, overwrite=overwrite, inputs=(*inputs, model_dir, head_dir))
    head, meta, extra = load_head(head_dir)
    model = load_model(model_dir)
    check_fingerprint(meta, model.fingerprint, head_dir=head_dir)
    if apply_encoder_layers(model, extra):
        log.info("using the head's fine-tuned last encoder layers")
    classes = list(meta["classes"])
    hp = meta["params"]
    counts: dict[str, int] = {}
    n = 0
    with open_input([str(p) for p in inputs], fmt, require="any", modality=modality,
                    **_reader_options(reader)) as src, atomic_path(out, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="") as fh:
            for k, chunk in enumerate(src.iter_chunks(chunk_cells)):
                m = chunk.n_cells
                mask = np.stack([_has_counts(chunk.rna, m), _has_counts(chunk.prot, m)], 1).astype(np.float32)
                if head.fusion in MODALITIES and not mask[:, MODALITIES.index(head.fusion)].all():
                    missing = int((mask[:, MODALITIES.index(head.fusion)] == 0).sum())
                    raise InputError(f"head {head_dir} uses {head.fusion} only, but {missing} cells of "
                                     f"{inputs[0]} have no {head.fusion} counts; use a fusion head")
                emb = model.embed(chunk.rna, chunk.prot, genes=chunk.gene_names if chunk.rna is not None else None,
                                  proteins=chunk.protein_names if chunk.prot is not None else None)
                pred = predict_head(head, emb.get("rna"), emb.get("prot"), mask=mask,
                                    mc_samples=int(hp.get("mc_samples", 20)), seed=int(hp.get("seed", 0)) + k)
                df = prediction_frame(pred, classes, chunk.barcodes)
                df.to_csv(fh, sep="\t", index=False, header=(k == 0), float_format="%.6g")
                n += m
                for lab, c in df["label"].value_counts().items():
                    counts[str(lab)] = counts.get(str(lab), 0) + int(c)
                code = np.bincount(2 * df["has_rna"].to_numpy(int) + df["has_prot"].to_numpy(int), minlength=4)
                for key, c in zip(("none", "prot_only", "rna_only", "both"), code.tolist(), strict=True):
                    if c:
                        counts[f"cells_{key}"] = counts.get(f"cells_{key}", 0) + c
            if n == 0:
                raise InputError(f"{inputs[0]}: no cells to predict")
    n_none = counts.get("cells_none", 0)
    if n_none:
        log.warning("%d cells have neither RNA nor protein counts: no label", n_none)
    log.info("wrote %s: %d cells", out, n)
    return {"n_cells": n, **{k: v for k, v in counts.items() if k.startswith("cells_")},
            "labels": {k: v for k, v in counts.items() if not k.startswith("cells_")}}
