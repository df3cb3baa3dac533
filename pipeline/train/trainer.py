"""The training loop of the dual encoder.

AdamW, warmup + cosine schedule, bf16 autocast, validation retrieval, early stopping, checkpoints every N steps
and on SIGTERM/SIGINT, exact resumes, optional DDP (``torchrun``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omicsclip.errors import InputError, OmicsclipError
from omicsclip.model.batchops import Augmentation, model_inputs
from omicsclip.model.encoders import DualEncoder
from omicsclip.model.loss import ClipLoss
from omicsclip.model.preprocess import TorchPreprocessor
from omicsclip.progress import Progress
from omicsclip.train.checkpoint import LAST, capture_rng, restore_rng, save_checkpoint
from omicsclip.train.data import DeviceBatches, StoreBatches
from omicsclip.train.distributed import DistInfo, all_gather_objects, all_reduce_sum, any_rank, barrier
from omicsclip.train.validation import EarlyStopping, embed_inputs, grouped_retrieval_scores

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class TrainingInterrupted(OmicsclipError):
    """SIGTERM/SIGINT during training; a checkpoint was written first."""

    exit_code = 130


@dataclass(frozen=True)
class TrainSettings:
    """The parts of the ``train`` config section the loop needs (no defaults: build it with :meth:`from_config`).

    Attributes
    ----------
    epochs, min_steps, max_steps, batch_size, lr, weight_decay, warmup_steps, thinning, feature_dropout, prot_feature_dropout, gene_masking, gene_shift, patience, eval_every, checkpoint_every, logit_chunk_size, seed, monitor, ema_decay
        The ``train`` config keys of the same names (documented in ``configs/default.yaml``).
    bf16
        Whether the forward pass runs under bf16 autocast (resolved from ``train.precision`` and the device).
    """

    epochs: int
    min_steps: int
    max_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    thinning: float
    feature_dropout: float
    prot_feature_dropout: float
    gene_masking: float
    gene_shift: float
    patience: int
    eval_every: int
    checkpoint_every: int
    logit_chunk_size: int
    bf16: bool
    seed: int
    monitor: str
    ema_decay: float

    @classmethod
    def from_config(cls, train: dict[str, Any], *, bf16: bool) -> TrainSettings:
        """Take the loop's settings from the validated ``train`` config section.

        Parameters
        ----------
        train
            The ``train`` section (every key the loop needs is present in a validated config).
        bf16
            Run the forward pass under bf16 autocast.
        """
        keys = [f for f in cls.__dataclass_fields__ if f != "bf16"]
        return cls(bf16=bf16, **{k: train[k] for k in keys})


SIGNAL_CHECK_EVERY = 8  # steps between the ranks' collective check for SIGTERM/SIGINT under DDP


def logit_chunk(chunk_size: int, batch_size: int) -> int:
    """Resolve ``train.logit_chunk_size``: 0 = auto, the whole batch up to 16,384 rows, chunks of 8,192 above.

    Parameters
    ----------
    chunk_size
        The configured chunk size.
    batch_size
        The global batch size.
    """
    if chunk_size:
        return int(chunk_size)
    return 0 if batch_size <= 16_384 else 8_192


class WarmupCosine:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total`` steps.

    A callable object (not a closure) so that ``LambdaLR.state_dict`` stores its plain attributes.

    Parameters
    ----------
    warmup
        Warmup steps.
    total
        Total optimiser steps of the run.
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = int(warmup)
        self.total = max(int(total), 1)

    def __call__(self, step: int) -> float:
        """Return the LR multiplier at optimiser step ``step`` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - self.warmup, span) / span))


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only (not on biases, LayerNorm gains or the temperature).

    Ensemble layers (:class:`omicsclip.model.encoders.MemberLinear`, ``MemberLayerNorm``) carry a leading member
    dimension (``member_dims``), which does not count.
    """
    decay, no_decay = [], []
    for module in model.modules():
        extra = getattr(module, "member_dims", 0)
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (decay if p.ndim - extra >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Runs (or resumes) one training job; rank 0 writes the log and checkpoints.

    Parameters
    ----------
    model
        The dual encoder (already on ``device``).
    source
        Training batches (device-resident or streamed).
    pre
        The fitted preprocessing on ``device``.
    val_inputs
        Preprocessed validation inputs (RNA, protein) on ``device``, or ``None`` (no early stopping).
    val_groups
        Group name -> rows of ``val_inputs``: each validation cell's partner is ranked among its own group's
        cells (``train.val_within``), and each group's FOSCTTM is logged; ``None`` = among all of them.
    settings
        Loop settings.
    device
        Training device.
    dist
        Distributed layout.
    work_dir
        Holds ``checkpoints/`` and ``train_log.jsonl``.
    fingerprint
        Identifies config + data; a checkpoint with another fingerprint is refused on resume.
    on_epoch
        Optional callback ``(record) -> None`` after every epoch (tests, progress).
    """

    def __init__(self, model: DualEncoder, source: DeviceBatches | StoreBatches, pre: TorchPreprocessor,
                 val_inputs: tuple[torch.Tensor, torch.Tensor] | None, settings: TrainSettings,
                 device: torch.device, dist: DistInfo, work_dir: Path, fingerprint: str,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 val_groups: dict[str, torch.Tensor] | None = None) -> None:
        self.model = model
        self.source = source
        self.pre = pre
        self.val_inputs = val_inputs
        self.val_groups = val_groups
        self.s = settings
        self.device = device
        self.dist = dist
        self.work_dir = Path(work_dir)
        self.ckpt_dir = self.work_dir / "checkpoints"
        self.log_path = self.work_dir / "train_log.jsonl"
        self.fingerprint = fingerprint
        self.on_epoch = on_epoch
        self.steps_per_epoch = source.steps_per_epoch
        if self.steps_per_epoch < 1:
            raise InputError(f"train.batch_size={settings.batch_size} is larger than the training set")
        # small datasets get few optimiser steps per epoch: extend the run to at least ``min_steps`` steps
        epochs = max(settings.epochs, math.ceil(settings.min_steps / self.steps_per_epoch))
        if epochs != settings.epochs:
            log.info("train: %d epochs of %d steps for train.min_steps=%d (train.epochs=%d)", epochs,
                     self.steps_per_epoch, settings.min_steps, settings.epochs)
            settings = dataclasses.replace(settings, epochs=epochs)
            self.s = settings
        self.total_steps = self.steps_per_epoch * settings.epochs
        if settings.max_steps and settings.max_steps < self.total_steps:  # the last epoch ends part-way
            self.total_steps = settings.max_steps
            settings = dataclasses.replace(settings, epochs=math.ceil(settings.max_steps / self.steps_per_epoch))
            self.s = settings
            log.info("train: stopping after train.max_steps=%d steps (%d epochs of %d steps)", self.total_steps,
                     settings.epochs, self.steps_per_epoch)
        self.ddp: nn.Module = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self.ddp = DDP(model, device_ids=ids)
        if device.type == "cuda" and settings.bf16:
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls of the loss in TF32, like the bf16 model
        # fused: one kernel for all parameters (CPU and CUDA), ~3x faster than the per-parameter loop on the CPU
        self.opt = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr,
                                     fused=device.type in ("cpu", "cuda"))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, WarmupCosine(settings.warmup_steps, self.total_steps))
        self.loss_fn = ClipLoss(logit_chunk(settings.logit_chunk_size, settings.batch_size), dist.world_size,
                                dist.rank, members=model.members)
        self.aug = Augmentation(settings.thinning, settings.feature_dropout, settings.prot_feature_dropout,
                                settings.gene_masking, settings.gene_shift)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(settings.seed * 7919 + dist.rank)
        self.stopper = EarlyStopping(settings.patience, settings.monitor)
        # exponential moving average of the weights: validated, kept and saved instead of the raw weights
        self.ema: DualEncoder | None = None
        if settings.ema_decay > 0:
            self.ema = copy.deepcopy(model).eval()
            self.ema.requires_grad_(False)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.loss_sum = torch.zeros((), device=device)
        self.log_lines: list[str] = []

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Return the full training state (collective under DDP: gathers every rank's RNG state)."""
        rng = all_gather_objects(capture_rng(self.gen), self.dist)
        return {
            "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "world_size": self.dist.world_size,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "early_stopping": self.stopper.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "loss_sum": self.loss_sum.detach().cpu(), "log": list(self.log_lines), "rng": rng,
        }

    def save(self) -> None:
        """Write a checkpoint (rank 0) of the current state; all ranks take part."""
        state = self.state_dict()  # collective (RNG states of every rank)
        if self.dist.is_main:
            save_checkpoint(state, self.ckpt_dir / LAST)
            log.debug("checkpoint at step %d (epoch %d)", self.global_step, self.epoch)
        barrier(self.dist)

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        """Resume from a checkpoint written by :meth:`save` (same config, data and number of processes).

        Raises
        ------
        InputError
            The checkpoint belongs to another format, config/data or number of processes.
        """
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"checkpoint format {ck.get('format')} is not supported")
        if ck["fingerprint"] != self.fingerprint:
            raise InputError("checkpoint belongs to another config or store; use --overwrite to start over")
        if ck["world_size"] != self.dist.world_size:
            raise InputError(f"checkpoint was written by {ck['world_size']} processes, resuming with "
                             f"{self.dist.world_size}; resume with the same number of processes")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.stopper.load_state_dict(ck["early_stopping"])
        if self.ema is not None:
            self.ema.load_state_dict(ck["ema"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.loss_sum = ck["loss_sum"].to(self.device)
        self.log_lines = list(ck["log"])
        restore_rng(ck["rng"][self.dist.rank], self.gen)
        if self.dist.is_main:
            self._rewrite_log()
        log.info("resumed at epoch %d, step %d", self.epoch, self.global_step)

    def _rewrite_log(self) -> None:
        from omicsclip.io.atomic import atomic_path

        with atomic_path(self.log_path, overwrite=True) as tmp:
            tmp.write_text("".join(line + "\n" for line in self.log_lines))

    # ------------------------------------------------------------------------------------------ the loop
    def _train_step(self, batch) -> None:
        x_rna, x_prot = model_inputs(batch, self.pre, self.aug if self.aug.active else None, self.gen)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.s.bf16):
            out = self.ddp(x_rna, x_prot)
        loss = self.loss_fn(**out)
        self.opt.zero_grad(set_to_none=True)
        (loss * self.dist.world_size).backward()  # DDP averages gradients; this makes them those of the global loss
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self._update_ema()
        self.loss_sum += loss.detach()
        self.step_in_epoch += 1
        self.global_step += 1

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.s.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        for pe, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            pe.lerp_(p.detach(), 1.0 - decay)
        for be, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            be.copy_(b)

    @property
    def eval_model(self) -> DualEncoder:
        """The weights that are validated and kept: the moving average when enabled."""
        return self.model if self.ema is None else self.ema

    def _validate(self) -> tuple[float, float, dict[str, float]]:
        if self.val_inputs is None:
            return float("nan"), float("nan"), {}
        a, b = embed_inputs(self.eval_model, *self.val_inputs, bf16=self.s.bf16)
        return grouped_retrieval_scores(a, b, self.val_groups, k=10)

    def _end_epoch(self, seconds: float) -> dict[str, Any]:
        train_loss = float(all_reduce_sum(self.loss_sum, self.dist)) / max(self.step_in_epoch, 1)
        record: dict[str, Any] = {
            "epoch": self.epoch + 1, "step": self.global_step, "train_loss": train_loss,
            "val_recall_at_10": None, "val_foscttm": None, "temperature": self.model.temperature,
            "lr": float(self.sched.get_last_lr()[0]), "seconds": round(seconds, 3),
        }
        last = self.epoch + 1 == self.s.epochs
        if self.val_inputs is not None and ((self.epoch + 1) % self.s.eval_every == 0 or last):
            recall, fos, by_group = self._validate()
            record["val_recall_at_10"], record["val_foscttm"] = recall, fos
            if by_group:
                record["val_foscttm_by_group"] = by_group
            record["best"] = self.stopper.update(recall, fos, self.epoch + 1, self.eval_model)
        self.log_lines.append(json.dumps(record))
        if self.dist.is_main:
            with open(self.log_path, "a") as fh:
                fh.write(self.log_lines[-1] + "\n")
        self.epoch += 1
        self.step_in_epoch = 0
        self.loss_sum = torch.zeros((), device=self.device)
        return record

    def _loss_so_far(self) -> float:
        """Mean training loss of this epoch so far on this rank (a device sync: only when a line is written)."""
        return float(self.loss_sum) / max(self.step_in_epoch, 1)

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping; returns a summary (the best weights stay in ``self``).

        Progress (rank 0 only, :class:`omicsclip.progress.Progress`) counts optimiser steps over the whole run,
        not epochs: an epoch of a large atlas takes minutes, and a bar or log line that moved once per epoch
        looked like a hang. On a terminal a step bar shows the epoch, cells/s, the loss so far and the ETA of
        the run; without one (Snakemake logs) an INFO line every ``OMICSCLIP_PROGRESS_SECONDS`` gives the epoch,
        the step within it, cells/s, the epoch's loss so far (rank 0's batches) and the ETA of the epoch and of
        the run (an upper bound when early stopping ends the run sooner).

        Raises
        ------
        TrainingInterrupted
            After SIGTERM/SIGINT, once a checkpoint is written.
        """
        self.model.train()
        progress = Progress(self.total_steps, "train", "step", logger=log, enabled=self.dist.is_main,
                            initial=self.global_step, period=self.steps_per_epoch,
                            rate_scale=self.s.batch_size, rate_unit="cells")
        with progress, _StopFlag() as flag:
            while self.epoch < self.s.epochs and not self.stopper.should_stop:
                t0 = time.perf_counter()
                for batch in self.source.epoch(self.epoch, self.step_in_epoch):
                    self._train_step(batch)
                    progress.update(1, loss=self._loss_so_far)
                    if self.global_step >= self.total_steps:  # train.max_steps: the last, partial epoch
                        break
                    if self.global_step % self.s.checkpoint_every == 0:
                        self.save()
                    # under DDP the ranks agree on stopping through a collective (and a host sync): every
                    # SIGNAL_CHECK_EVERY steps, not every step; a single process checks for free every step
                    check = not self.dist.enabled or self.global_step % SIGNAL_CHECK_EVERY == 0
                    if check and any_rank(flag.signum is not None, self.dist, self.device):
                        self.save()
                        raise TrainingInterrupted(
                            f"training interrupted at step {self.global_step}; checkpoint saved in "
                            f"{self.ckpt_dir} (rerun with --resume to continue)")
                rec = self._end_epoch(time.perf_counter() - t0)
                progress.set_postfix(loss=rec["train_loss"])  # the epoch's mean, over all ranks
                if rec["val_foscttm"] is not None:
                    progress.set_postfix(val_foscttm=rec["val_foscttm"])
                if self.on_epoch is not None:
                    self.on_epoch(rec)
            self.save()
        if self.stopper.best_state is not None:
            self.model.load_state_dict(self.stopper.best_state)
        elif self.ema is not None:
            self.model.load_state_dict(self.ema.state_dict())
        return {"epochs": self.epoch, "steps": self.global_step, "best_epoch": self.stopper.best_epoch,
                "stopped_early": self.stopper.should_stop and self.epoch < self.s.epochs}
