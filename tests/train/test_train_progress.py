"""What a Snakemake log of `omicsclip train` shows: step progress lines with cells/s and ETAs (stderr not a TTY)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TINY, tiny_store


def _omicsclip() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


def test_train_logs_step_progress_without_a_terminal(tmp_path):
    store = tiny_store(tmp_path / "cells.zarr")
    sets = [x for s in [*TINY, "train.epochs=2", "train.min_steps=0"] for x in ("--set", s)]
    env = {**os.environ, "OMICSCLIP_PROGRESS_SECONDS": "0"}
    r = subprocess.run([_omicsclip(), "train", str(store), "--out", str(tmp_path / "model"), *sets],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "omicsclip.train.trainer: train: " in line]
    step = re.compile(r"train: epoch (\d)/2 step (\d+)/(\d+) \(\d+%\) [\d,.]+ cells/s, loss [-\w.+]+"
                      r"(, val_foscttm [-\w.+]+)?, ETA epoch \w+, run \w+$")
    steps = [m for line in lines if (m := step.search(line))]
    assert steps, r.stderr
    per_epoch = int(steps[0].group(3))
    assert [(int(m.group(1)), int(m.group(2))) for m in steps] == [
        (e, s) for e in (1, 2) for s in range(1, per_epoch + 1)]  # every step, both epochs
    assert re.search(r"train: finished epoch 2/2 step (\d+)/\1 \(100%\) in \w+, [\d,.]+ cells/s, loss [-\w.+]+",
                     lines[-1]), lines[-1]
