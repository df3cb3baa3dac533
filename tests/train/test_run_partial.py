"""``<out>.partial`` (issue #12 case 2): a run that fails before its first checkpoint leaves nothing, a
``.partial`` without a checkpoint never blocks a plain rerun, and a second run on the same output is refused."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
from conftest import TINY, tiny_store

from omicsclip.config import load_config
from omicsclip.errors import InputError
from omicsclip.train import run as run_mod
from omicsclip.train.run import train_model

FAST = TINY + ["train.epochs=1", "preprocess.n_hvg=0"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("store") / "cells.zarr", n_cells=120, n_genes=40)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_batch_larger_than_training_cells_leaves_nothing_and_rerun_works(store, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(InputError, match="train.batch_size=512 is larger than"):
        train_model(store, out, load_config(None, FAST + ["train.batch_size=512"]))
    assert _listing(tmp_path) == []  # no m.partial, no lock file
    train_model(store, out, load_config(None, FAST + ["train.batch_size=32"]))  # the corrected rerun
    assert (out / "model.json").exists()
    assert _listing(tmp_path) == ["m"]


def test_two_cell_store_leaves_nothing(tmp_path):
    two = tiny_store(tmp_path / "two.zarr", n_cells=2, n_genes=40)
    with pytest.raises(InputError, match="at least 3 cells"):
        train_model(two, tmp_path / "m", load_config(None, FAST + ["train.batch_size=2"]))
    assert _listing(tmp_path) == ["two.zarr"]


def test_interrupt_before_first_checkpoint_leaves_nothing(store, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # also what the CLI's SIGTERM handler raises (a BaseException)

    monkeypatch.setattr(run_mod, "_fit_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_model(store, tmp_path / "m", load_config(None, FAST))
    assert _listing(tmp_path) == []


def test_partial_without_checkpoint_does_not_block_a_plain_rerun(store, tmp_path, caplog):
    out = tmp_path / "m"
    left = tmp_path / "m.partial"  # as left by kill -9 before the first checkpoint
    (left / "checkpoints").mkdir(parents=True)
    (left / "split.tsv").write_text("barcode\tsplit\n")
    with caplog.at_level(logging.INFO, logger="omicsclip.train.run"):
        train_model(store, out, load_config(None, FAST))
    assert "without a checkpoint" in caplog.text
    assert _listing(tmp_path) == ["m"]


def test_partial_with_checkpoint_still_needs_resume(store, tmp_path):
    left = tmp_path / "m.partial"
    (left / "checkpoints").mkdir(parents=True)
    (left / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(InputError, match="pass --resume"):
        train_model(store, tmp_path / "m", load_config(None, FAST))
    assert (left / "checkpoints" / "last.pt").exists()


def test_second_run_on_the_same_output_is_refused(store, tmp_path):
    hold = textwrap.dedent("""
        import sys, time
        from omicsclip.io.atomic import output_lock
        with output_lock(sys.argv[1]):
            print("locked", flush=True)
            time.sleep(120)
    """)
    out = tmp_path / "m"
    proc = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        (tmp_path / "m.partial").mkdir()  # the live run's folder, no checkpoint yet: not removed
        with pytest.raises(InputError, match=rf"another process \(pid {proc.pid}\) is writing it"):
            train_model(store, out, load_config(None, FAST))
        with pytest.raises(InputError, match="is writing it"):
            train_model(store, out, load_config(None, FAST), resume=True)
        assert (tmp_path / "m.partial").is_dir()
    finally:
        proc.kill()
        proc.wait()
    train_model(store, out, load_config(None, FAST))  # its holder is dead: the partial is cleared, the run works
    assert _listing(tmp_path) == ["m"]
