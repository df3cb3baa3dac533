"""SIGTERM cleans up like Ctrl-C in every command, and a second writer of the same output is refused (issue #12)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from omicsclip.cli._common import guarded
from omicsclip.io.atomic import atomic_path

runner = CliRunner()


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "omicsclip.cli.main", *map(str, args)]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert proc.poll() is None, f"the command ended (exit {proc.returncode}) before it could be signalled"
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


@contextlib.contextmanager
def _ingesting(cells: Path, out: Path) -> Iterator[subprocess.Popen]:
    """An ``omicsclip ingest`` of ``cells`` (100-cell chunks) in a subprocess, from when its temporary exists;
    killed on the way out if still running."""
    proc = subprocess.Popen(_cli("ingest", cells, "--out", out, "--set", "ingest.chunk_cells=100"),
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any(p.name.startswith(f".{out.name}.tmp-") for p in out.parent.iterdir()), proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _sigterm(proc: subprocess.Popen) -> str:
    """Send SIGTERM; return the process's stderr once it has ended."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=60)[1]


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    """An input whose ingest takes seconds with 100-cell chunks (time to signal it mid-write)."""
    from omicsclip.io.synthetic import write_synthetic_h5ad

    return write_synthetic_h5ad(tmp_path_factory.mktemp("sig") / "cells.h5ad", n_cells=4000, n_genes=200,
                                n_proteins=6, n_types=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    from omicsclip.io.synthetic import write_synthetic_h5ad

    return write_synthetic_h5ad(tmp_path_factory.mktemp("sig") / "small.h5ad", n_cells=200, n_genes=200,
                                n_proteins=6, n_types=4)


def test_sigterm_in_a_command_removes_its_temporary_and_exits_143(tmp_path):
    app = typer.Typer()
    seen: list[Path] = []

    @app.command()
    @guarded
    def write(out: Path) -> None:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "part").write_text("half")
            seen.append(tmp)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
            raise AssertionError("not interrupted")

    before = signal.getsignal(signal.SIGTERM)
    r = runner.invoke(app, [str(tmp_path / "out")])
    assert r.exit_code == 143, r.output
    assert r.stderr.strip().splitlines() == ["omicsclip: error: terminated"]
    assert seen
    assert not seen[0].exists()
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler is removed afterwards


@pytest.mark.slow
def test_second_ingest_refused_then_sigterm_cleans_up(cells, small, tmp_path):
    out = tmp_path / "same.zarr"
    with _ingesting(cells, out) as proc:
        # case 3: a second writer of the same output fails with one line and exit 2, nothing of it is left
        from omicsclip.cli.main import app

        r = runner.invoke(app, ["ingest", str(small), "--out", str(out)])
        assert r.exit_code == 2, r.output
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("omicsclip:")]
        assert err == [f"omicsclip: error: {out}: another process (pid {proc.pid}) is writing it; wait for it "
                       f"to finish or choose another output"]
        assert r.stderr.strip().splitlines()[-1] == err[0]
        assert proc.poll() is None, "the first ingest must still be writing"
        # case 4: SIGTERM mid-write removes the temporary store (like Ctrl-C) and exits 143
        stderr = _sigterm(proc)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "omicsclip: error: terminated"
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no store, no temporary, no lock file
    r = runner.invoke(app, ["ingest", str(small), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert _hidden(tmp_path) == []


def test_stale_temporary_of_a_killed_ingest_removed_by_the_next_run(small, tmp_path, caplog):
    import logging
    import socket

    from omicsclip.cli.main import app

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".s.zarr.tmp-{socket.gethostname()}-{dead.pid}-0123abcd"
    (stale / "mod").mkdir(parents=True)
    (stale / "mod" / "chunk").write_bytes(b"\0" * 4096)
    with caplog.at_level(logging.INFO, logger="omicsclip.io.atomic"):
        r = runner.invoke(app, ["ingest", str(small), "--out", str(tmp_path / "s.zarr")])
    assert r.exit_code == 0, r.output
    assert not stale.exists()
    assert "stale temporar" in caplog.text
    assert _hidden(tmp_path) == []


def test_sigterm_during_the_demo_is_passed_on_to_snakemake(tmp_path):
    """The workflow child gets SIGTERM (to stop its jobs cleanly), not SIGKILL; the demo still exits 143."""
    import threading

    from omicsclip.cli.demo_cmd import run_workflow

    ready, stopped = tmp_path / "ready", tmp_path / "stopped"
    child = ("import signal, sys, time, pathlib\n"
             f"def stop(*_):\n    pathlib.Path({str(stopped)!r}).write_text('TERM')\n    sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             f"pathlib.Path({str(ready)!r}).write_text('up')\n"
             "time.sleep(60)\n")
    app = typer.Typer()

    @app.command()
    @guarded
    def demo() -> None:
        def signal_us() -> None:
            deadline = time.time() + 60
            while not ready.exists() and time.time() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=signal_us, daemon=True).start()
        run_workflow([sys.executable, "-c", child])

    t0 = time.time()
    r = runner.invoke(app, [])
    assert r.exit_code == 143, r.output
    assert r.stderr.strip().splitlines() == ["omicsclip: error: terminated"]
    assert stopped.read_text() == "TERM"  # the child's own SIGTERM handler ran
    assert time.time() - t0 < 30


@pytest.mark.slow
def test_sigterm_at_any_moment_of_a_zarr_write_ends_with_its_one_line(cells, tmp_path):
    """Zarr writes on an event-loop thread; SIGTERM while the main thread waits on it used to let the interpreter's
    teardown print "coroutine ... was never awaited" or "RuntimeError: cannot schedule new futures after shutdown"
    after the error line (about 1 run in 25). The console script now exits right after its line."""
    import random

    rng = random.Random(0)
    for i in range(8):
        with _ingesting(cells, tmp_path / f"o{i}.zarr") as proc:
            time.sleep(rng.random() * 0.5)
            stderr = _sigterm(proc)
        assert proc.returncode == 143, stderr
        lines = stderr.strip().splitlines()
        assert lines[-1] == "omicsclip: error: terminated", stderr
        assert not [ln for ln in lines if "never awaited" in ln or "Error" in ln or "Traceback" in ln], stderr
    assert list(tmp_path.iterdir()) == []


def test_console_script_exits_at_once_only_after_an_interrupt(monkeypatch):
    """``main`` flushes and ends the process (``os._exit``) for exit codes 130/143; any other exit is raised."""
    from omicsclip.cli import main as cli_main

    class Ended(Exception):
        pass

    def fake_exit(code):
        raise Ended(code)

    monkeypatch.setattr(cli_main.os, "_exit", fake_exit)
    for code in (130, 143):
        monkeypatch.setattr(cli_main, "app", lambda code=code: sys.exit(code))
        with pytest.raises(Ended) as ended:
            cli_main.main()
        assert ended.value.args == (code,)
    for code in (0, 1, 2):
        monkeypatch.setattr(cli_main, "app", lambda code=code: sys.exit(code))
        with pytest.raises(SystemExit) as exited:
            cli_main.main()
        assert exited.value.code == code
