"""Training the dual encoder: the run (split, preprocessing, model folder), the loop, data, checkpoints, DDP.

Layering: this package imports :mod:`omicsclip.model`, :mod:`omicsclip.io` and the modules below them only.
"""

from __future__ import annotations

from omicsclip.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from omicsclip.train.data import DeviceBatches, DeviceCells, StoreBatches, epoch_permutation, load_cells
from omicsclip.train.distributed import DistInfo, init_distributed, launched_by_torchrun, shutdown
from omicsclip.train.run import run_fingerprint, train_model
from omicsclip.train.trainer import Trainer, TrainingInterrupted, TrainSettings, WarmupCosine, logit_chunk
from omicsclip.train.validation import EarlyStopping, embed_inputs, retrieval_scores

__all__ = [
    "DeviceBatches",
    "DeviceCells",
    "DistInfo",
    "EarlyStopping",
    "StoreBatches",
    "TrainSettings",
    "Trainer",
    "TrainingInterrupted",
    "WarmupCosine",
    "capture_rng",
    "embed_inputs",
    "epoch_permutation",
    "init_distributed",
    "launched_by_torchrun",
    "load_checkpoint",
    "load_cells",
    "logit_chunk",
    "restore_rng",
    "retrieval_scores",
    "run_fingerprint",
    "save_checkpoint",
    "shutdown",
    "train_model",
]
