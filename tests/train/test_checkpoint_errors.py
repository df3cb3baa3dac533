"""Issue #12 case 6: a corrupt or pickled checkpoint is refused in one line naming it, without torch's advice to
load it with ``weights_only=False``; ``train --resume`` exits 2."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_store
from fuzzing import invoke

from omicsclip.config import load_config
from omicsclip.errors import InputError
from omicsclip.train.checkpoint import load_checkpoint, save_checkpoint
from omicsclip.train.run import train_model
from omicsclip.train.trainer import Trainer, TrainingInterrupted

SETS = [*TINY, "train.epochs=3", "train.checkpoint_every=2"]


class Foreign:
    """Not a tensor: ``torch.load(weights_only=True)`` refuses to unpickle it."""

    def __init__(self) -> None:
        self.x = 1


def _one_line_refusal(path: Path) -> str:
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: not a readable omicsclip checkpoint (")
    assert msg.endswith("; delete it or train without --resume")
    assert "weights_only" not in msg
    return msg


def test_garbage_truncated_empty_and_pickled_files(tmp_path):
    good = save_checkpoint({"w": torch.arange(1000.0), "log": ["{}"]}, tmp_path / "good.pt")
    assert load_checkpoint(good)["log"] == ["{}"]
    cases = {
        "garbage.pt": b"not a checkpoint at all\n" * 3,
        "empty.pt": b"",
        "truncated.pt": good.read_bytes()[: len(good.read_bytes()) // 2],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        _one_line_refusal(tmp_path / name)
    torch.save({"model": Foreign()}, tmp_path / "pickled.pt")
    assert "pickled Python objects" in _one_line_refusal(tmp_path / "pickled.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"model": Foreign()}, protocol=4))  # warns in torch.load
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing on stderr besides the refusal
        _one_line_refusal(tmp_path / "plain.pkl")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert "holds a list" in _one_line_refusal(tmp_path / "list.pt")
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_training_state_checked_against_the_model(tmp_path):
    model = torch.nn.Linear(4, 2)
    base = {"format": 1, "fingerprint": "f", "world_size": 1, "epoch": 0, "step_in_epoch": 0, "global_step": 0,
            "model": OrderedDict(model.state_dict()), "optimizer": {}, "scheduler": {}, "early_stopping": {},
            "ema": None, "loss_sum": torch.zeros(()), "log": [], "rng": [
                {"torch": torch.zeros(1), "cuda": [], "numpy": {}, "python": {}, "generator": torch.zeros(1)}]}
    save_checkpoint(base, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt", model)["world_size"] == 1
    for bad, needle in (({"epoch": "1"}, "epoch is a str"), ({"rng": []}, "0 RNG states"),
                        ({"model": {"weight": torch.zeros(3, 4)}}, "1 missing, 0 unexpected, 1 shape mismatch")):
        save_checkpoint({**base, **bad}, tmp_path / "bad.pt")
        with pytest.raises(InputError) as err:
            load_checkpoint(tmp_path / "bad.pt", model)
        assert needle in str(err.value)
        assert "\n" not in str(err.value)
    save_checkpoint({k: v for k, v in base.items() if k != "optimizer"}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="no optimizer"):
        load_checkpoint(tmp_path / "bad.pt", model)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, request):
    """A store and an unfinished run (``m.partial`` with a checkpoint), interrupted at step 2."""
    root = tmp_path_factory.mktemp("ckpt_errors")
    store = tiny_store(root / "cells.zarr")
    orig = Trainer._train_step

    def step_then_signal(self, batch):
        orig(self, batch)
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    mp = pytest.MonkeyPatch()
    mp.setattr(Trainer, "_train_step", step_then_signal)
    try:
        with pytest.raises(TrainingInterrupted):
            train_model(store, root / "m", load_config(None, SETS))
    finally:
        mp.undo()
    assert (root / "m.partial" / "checkpoints" / "last.pt").exists()
    return store, root / "m.partial"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled"])
def test_resume_with_a_damaged_checkpoint_is_one_line(interrupted, tmp_path, damage):
    store, partial = interrupted
    work = tmp_path / "m.partial"
    shutil.copytree(partial, work)
    last = work / "checkpoints" / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:4000])
    elif damage == "garbage":
        last.write_bytes(os.urandom(3000))
    else:
        torch.save({"format": Foreign()}, last)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = invoke(["train", store, "--out", tmp_path / "m", *[x for s in SETS for x in ("--set", s)], "--resume"])
    assert r.exit_code == 2, (r.stderr, r.exception)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("omicsclip: error:")]
    assert errors == [r.stderr.strip().splitlines()[-1]]
    assert f"{last}: not a readable omicsclip checkpoint (" in errors[0]
    assert "weights_only" not in r.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "m").exists()
