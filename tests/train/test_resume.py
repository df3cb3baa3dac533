"""Checkpoints and exact resumes: an interrupted-and-resumed run ends with exactly the uninterrupted weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_store

from omicsclip.config import load_config
from omicsclip.errors import InputError
from omicsclip.io.hashing import sha256_file
from omicsclip.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from omicsclip.train.run import train_model
from omicsclip.train.trainer import Trainer, TrainingInterrupted

RESUME = TINY + ["train.epochs=6", "train.checkpoint_every=4", "train.eval_every=2", "train.patience=50"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("store") / "cells.zarr")


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "m"
    train_model(store, out, load_config(None, RESUME))
    return out


def _log_without_seconds(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def _interrupt_at(monkeypatch, step: int) -> None:
    orig = Trainer._train_step

    def step_then_signal(self, batch):
        orig(self, batch)
        if self.global_step == step:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag; the loop checkpoints and stops

    monkeypatch.setattr(Trainer, "_train_step", step_then_signal)


@pytest.mark.parametrize("step", [6, 9])  # mid-epoch, and an epoch boundary (3 steps per epoch) after an eval
def test_signal_checkpoint_then_resume_is_bit_exact(store, reference, tmp_path, monkeypatch, step):
    out = tmp_path / "m"
    _interrupt_at(monkeypatch, step)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_model(store, out, load_config(None, RESUME))
    monkeypatch.undo()
    partial = tmp_path / "m.partial"
    assert not out.exists()
    assert (partial / "checkpoints" / "last.pt").exists()
    ck = load_checkpoint(partial / "checkpoints" / "last.pt")
    assert ck["global_step"] == step
    train_model(store, out, load_config(None, RESUME), resume=True)
    assert sha256_file(out / "model.safetensors") == sha256_file(reference / "model.safetensors")
    assert _log_without_seconds(out / "train_log.jsonl") == _log_without_seconds(reference / "train_log.jsonl")


def test_unfinished_run_needs_resume_or_overwrite(store, tmp_path, monkeypatch):
    out = tmp_path / "m"
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        train_model(store, out, load_config(None, RESUME))
    monkeypatch.undo()
    with pytest.raises(InputError, match="--resume"):
        train_model(store, out, load_config(None, RESUME))
    with pytest.raises(InputError, match="another config"):
        train_model(store, out, load_config(None, RESUME + ["train.lr=0.01"]), resume=True)
    train_model(store, out, load_config(None, RESUME + ["train.epochs=1"]), overwrite=True)
    assert (out / "model.json").exists()
    assert not (tmp_path / "m.partial").exists()


def test_checkpoint_is_weights_only_and_atomic(tmp_path):
    gen = torch.Generator().manual_seed(3)
    state = {"rng": capture_rng(gen), "w": torch.arange(3.0), "log": ["{}"], "n": 1}
    path = save_checkpoint(state, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    back = load_checkpoint(path)  # torch.load(weights_only=True) inside
    expected = torch.rand(4, generator=gen)
    gen2 = torch.Generator()
    restore_rng(back["rng"], gen2)
    assert torch.equal(torch.rand(4, generator=gen2), expected)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable omicsclip checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_rng_roundtrip_covers_numpy_and_python():
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(0)
    state = capture_rng(gen)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state, gen)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def _omicsclip() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(store, tmp_path):
    cfg = RESUME + ["train.epochs=15", "preprocess.n_hvg=0"]  # n_hvg=0: no scanpy import in the subprocesses
    ref = train_model(store, tmp_path / "ref", load_config(None, cfg))  # uninterrupted, in this process
    sets = [a for s in cfg for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "m"
    ckpt = tmp_path / "m.partial" / "checkpoints" / "last.pt"
    proc = subprocess.Popen([_omicsclip(), "train", str(store), "--out", str(out), *sets], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    assert ckpt.exists()
    killed_at = load_checkpoint(ckpt)["global_step"]
    assert 0 < killed_at < 15 * 3
    r = subprocess.run([_omicsclip(), "train", str(store), "--out", str(out), "--resume", *sets], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sha256_file(out / "model.safetensors") == sha256_file(ref / "model.safetensors")
    assert _log_without_seconds(out / "train_log.jsonl") == _log_without_seconds(ref / "train_log.jsonl")
