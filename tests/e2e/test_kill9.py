"""kill -9 at random points of ingest, train, index and finetune (issue #12).

Each trial starts the real CLI in a subprocess on small synthetic data, sends SIGKILL after a random delay drawn
within the time the command spends writing (it is killed that long after it takes its output lock; the writing
time is measured first: killing during the imports before it would test nothing), and checks that the final output is either absent or complete (loadable)
and that nothing but the run's own leftovers is there (its temporaries, its lock file, train's ``.partial``);
then it reruns the command (train: ``--resume`` when a checkpoint survived; ``--overwrite`` when the output was
already complete) and checks the rerun succeeds, leaves a complete output and clears every stale temporary.

Trials per stage: OMICSCLIP_KILL9_TRIALS (default 2); delays are drawn from a seeded generator
(OMICSCLIP_KILL9_SEED, default 0). Each trial is counted as ``kill9:<stage>`` / ``absent`` or ``complete``
(tests/fuzzing.py; OMICSCLIP_FUZZ_REPORT writes the counts).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY
from fuzzing import record

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

TRIALS = int(os.environ.get("OMICSCLIP_KILL9_TRIALS", "2"))
SEED = int(os.environ.get("OMICSCLIP_KILL9_SEED", "0"))
TRAIN_SETS = [a for s in TINY + ["train.epochs=4", "train.checkpoint_every=2", "preprocess.n_hvg=0"]
              for a in ("--set", s)]
FINETUNE_SETS = ["--set", "finetune.epochs=20", "--set", "finetune.ensemble=2", "--set", "finetune.mc_samples=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
N_CELLS = 600


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "omicsclip.cli.main", *map(str, args)]


def _run(args: list[str]) -> float:
    """Run the CLI to completion; return its wall time."""
    t0 = time.perf_counter()
    r = subprocess.run(_cli(*args), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"omicsclip {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr}"
    return time.perf_counter() - t0


def _writing_window(args: list[str], out: Path) -> tuple[float, float]:
    """Run the CLI to completion; return (when it took the output lock ``.NAME.lock``, when it ended), in s."""
    lock = out.with_name(f".{out.name}.lock")
    t0 = time.perf_counter()
    proc = subprocess.Popen(_cli(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t_lock = None
    while proc.poll() is None:
        if t_lock is None and lock.exists():
            t_lock = time.perf_counter() - t0
        time.sleep(0.01)
    t_end = time.perf_counter() - t0
    assert proc.returncode == 0, f"omicsclip {' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stderr.read()}"
    return (t_lock if t_lock is not None else 0.0), t_end


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, object]:
    """Input, store, model and embeddings, made with the CLI; the wall times of ingest and train are measured."""
    from omicsclip.io.synthetic import write_synthetic_h5ad
    from omicsclip.model.embed import embed_store

    tmp = tmp_path_factory.mktemp("kill9")
    h5ad = write_synthetic_h5ad(tmp / "cells.h5ad", n_cells=N_CELLS, n_genes=120, n_proteins=6, n_types=4)
    d: dict[str, object] = {"h5ad": h5ad, "store": tmp / "cells.zarr", "model": tmp / "model", "emb": tmp / "emb.zarr"}
    d["t_ingest"] = _writing_window(STAGES["ingest"]["args"](d, tmp / "cells.zarr"), tmp / "cells.zarr")
    d["t_train"] = _writing_window(STAGES["train"]["args"](d, tmp / "model"), tmp / "model")
    embed_store(d["store"], d["model"], d["emb"])
    return d


def _complete_store(out: Path) -> None:
    from omicsclip.io.store import read_store

    assert read_store(out).n_cells == N_CELLS


def _complete_model(out: Path) -> None:
    from omicsclip.model.modelio import load_model

    load_model(out)
    assert (out / "train_log.jsonl").read_text().strip()


def _complete_index(out: Path) -> None:
    from omicsclip.index.reference import ReferenceIndex

    assert ReferenceIndex.load(out, use_gpu=False).n == N_CELLS


def _complete_head(out: Path) -> None:
    from omicsclip.heads.headio import load_head

    load_head(out)


STAGES = {
    "ingest": {"args": lambda d, out: ["ingest", d["h5ad"], "--out", out, "--set", "ingest.chunk_cells=60"],
               "complete": _complete_store, "name": "cells.zarr"},
    "train": {"args": lambda d, out: ["train", d["store"], "--out", out, *TRAIN_SETS],
              "complete": _complete_model, "name": "model"},
    "index": {"args": lambda d, out: ["index", d["emb"], "--out", out, "--kind", "flat"],
              "complete": _complete_index, "name": "index"},
    "finetune": {"args": lambda d, out: ["finetune", d["emb"], "--labels", "cell_type", "--out", out,
                                         "--labels-per-class", "5", *FINETUNE_SETS],
                 "complete": _complete_head, "name": "head"},
}


def _allowed_leftovers(name: str, pid: int) -> re.Pattern:
    """What a killed run may leave besides its output: its temporaries, its lock file, train's ``.partial``."""
    n = re.escape(name)
    return re.compile(rf"^(?:{n}|{n}\.partial|\.{n}\.lock|\.{n}\.(?:tmp|old)-.+-{pid}-[0-9a-f]+)$")


_TEMPORARY = re.compile(r"^\..+\.(?:(?:tmp|old)-.+-\d+-[0-9a-f]+|lock)$")


def _stray_temporaries(folder: Path) -> list[str]:
    """Temporaries and lock files anywhere under ``folder`` (also inside outputs, e.g. checkpoints)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if _TEMPORARY.match(p.name))


def _kill_at(args: list[str], out: Path, delay: float, log: Path) -> int:
    """Start the CLI, wait until it takes its output lock, SIGKILL it ``delay`` s later (unless it ended).

    Returns its pid.
    """
    lock = out.with_name(f".{out.name}.lock")
    with log.open("w") as err:
        proc = subprocess.Popen(_cli(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        while proc.poll() is None and not lock.exists():
            time.sleep(0.005)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), f"exit {proc.returncode} before the kill\n{log.read_text()}"
    return proc.pid


def _trial(stage: str, data: dict[str, object], folder: Path, delay: float) -> str:
    """Kill one run of ``stage`` after ``delay`` s, check what is left, rerun; return ``absent``/``complete``."""
    spec = STAGES[stage]
    name, complete = spec["name"], spec["complete"]
    folder.mkdir()
    out = folder / name
    args = spec["args"](data, out)
    pid = _kill_at(args, out, delay, folder.with_suffix(".log"))

    allowed = _allowed_leftovers(name, pid)
    left = sorted(p.name for p in folder.iterdir())
    assert all(allowed.match(x) for x in left), f"{stage} killed {delay:.2f} s after its lock left {left}"
    outcome = "complete" if out.exists() else "absent"
    if out.exists():
        complete(out)  # a final output is never half-written
    print(f"kill9 {stage}: killed {delay:.2f} s after taking its lock, left {left}")  # shown with pytest -s

    rerun = list(args)
    if stage == "train" and (folder / f"{name}.partial" / "checkpoints" / "last.pt").exists():
        rerun.append("--resume")
    elif out.exists():
        rerun.append("--resume" if stage == "train" else "--overwrite")
    _run(rerun)  # a plain rerun is never blocked by what the killed run left
    complete(out)
    after = sorted(p.name for p in folder.iterdir())
    assert after == [name], f"{stage} killed at {delay:.2f} s (left {left}): the rerun left {after}"
    assert _stray_temporaries(folder) == [], f"{stage} killed at {delay:.2f} s: stale temporaries after the rerun"
    return outcome


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill9_leaves_absent_or_complete_output_and_rerun_succeeds(stage, data, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    window = data.get(f"t_{stage}")
    if window is None:  # not timed while making the data
        (tmp_path / "measure").mkdir()
        out = tmp_path / "measure" / STAGES[stage]["name"]
        window = _writing_window(STAGES[stage]["args"](data, out), out)
    rng = random.Random(f"{SEED}:{stage}")
    t_lock, t_end = window
    delays = [rng.uniform(0.0, t_end - t_lock) for _ in range(TRIALS)]  # after the output lock is taken
    # trials are independent (one folder each): two at a time, as the CI machine has two cores
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda i: _trial(stage, data, tmp_path / f"trial{i}", delays[i]), range(TRIALS)))
    for outcome in outcomes:
        record(f"kill9:{stage}", outcome)
