"""Output locks and temporaries (issue #12, cases 3 and 4): one writer per output, stale temporaries cleared."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omicsclip.errors import InputError
from omicsclip.io.atomic import (
    atomic_path,
    lock_file,
    lock_held,
    output_lock,
    remove_stale_temporaries,
    temp_sibling,
)

HOLD = textwrap.dedent("""
    import sys, time
    from omicsclip.io.atomic import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process that holds the output lock of ``path`` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_second_writer_refused_while_first_holds_the_lock(tmp_path):
    out = tmp_path / "out.txt"
    proc = _hold_lock(out)
    try:
        assert lock_held(out)
        with pytest.raises(InputError, match=rf"another process \(pid {proc.pid}\) is writing it") as err, \
                atomic_path(out) as tmp:
            tmp.write_text("second")
        assert "\n" not in str(err.value)
        assert str(out) in str(err.value)
        assert not out.exists()
        assert _hidden(tmp_path) == [".out.txt.lock"]  # only the holder's lock file, no temporary of ours
    finally:
        proc.kill()  # like kill -9: the kernel drops the lock
        proc.wait()
    assert not lock_held(out)
    with atomic_path(out) as tmp:  # the dead holder's lock file does not block
        tmp.write_text("after")
    assert out.read_text() == "after"
    assert _hidden(tmp_path) == []  # lock file removed by its holder


def test_lock_is_exclusive_in_process_and_released(tmp_path):
    out = tmp_path / "x"
    with output_lock(out):
        assert lock_file(out).exists()
        with pytest.raises(InputError, match="is writing it"), output_lock(out):
            pass
    assert not lock_file(out).exists()
    with output_lock(out):
        pass


def test_output_appearing_before_the_rename_is_not_replaced(tmp_path):
    out = tmp_path / "out.txt"
    def write_while_another_appears() -> None:
        with atomic_path(out) as tmp:
            tmp.write_text("mine")
            out.write_text("theirs")  # a writer that does not lock

    with pytest.raises(InputError, match="written by another process meanwhile"):
        write_while_another_appears()
    assert out.read_text() == "theirs"
    assert _hidden(tmp_path) == []  # our temporary and the lock are gone
    with atomic_path(out, overwrite=True) as tmp:  # with overwrite it is replaced
        tmp.write_text("mine")
    assert out.read_text() == "mine"
    assert _hidden(tmp_path) == []


def test_temporary_names_record_host_and_pid(tmp_path):
    t = temp_sibling(tmp_path / "a.zarr")
    assert t.name.startswith(f".a.zarr.tmp-{socket.gethostname()}-{os.getpid()}-")
    assert temp_sibling(tmp_path / "a.zarr", "old").name.startswith(".a.zarr.old-")


def test_stale_temporaries_of_dead_processes_removed(tmp_path, caplog):
    host, dead = socket.gethostname(), _dead_pid()
    stale = tmp_path / f".out.zarr.tmp-{host}-{dead}-deadbeef"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "chunk").write_bytes(b"x" * 1000)
    stale_old = tmp_path / f".out.zarr.old-{host}-{dead}-0badc0de"
    stale_old.write_text("old")
    live = tmp_path / f".out.zarr.tmp-{host}-{os.getppid()}-12345678"  # a live process: kept
    live.mkdir()
    other_host = tmp_path / ".out.zarr.tmp-elsewhere-1-abcdef01"  # another host's: kept, with a warning
    other_host.mkdir()
    other_out = tmp_path / f".other.zarr.tmp-{host}-{dead}-abcdef01"  # another output's: not ours to clear
    other_out.mkdir()
    with caplog.at_level(logging.INFO, logger="omicsclip.io.atomic"), atomic_path(tmp_path / "out.zarr") as tmp:
        tmp.mkdir()
    assert not stale.exists()
    assert not stale_old.exists()
    assert {p.name for p in (live, other_host, other_out) if p.exists()} == {live.name, other_host.name, other_out.name}
    assert "removed 2 stale temporaries" in caplog.text
    assert "host elsewhere" in caplog.text
    assert remove_stale_temporaries(tmp_path / "out.zarr") == 0


def test_nested_atomic_paths_inside_a_locked_output(tmp_path):
    out = tmp_path / "run"
    with atomic_path(out) as work:
        (work / "checkpoints").mkdir(parents=True)
        for i in range(3):  # like checkpoints and logs rewritten inside the run's folder
            with atomic_path(work / "checkpoints" / "last.pt", overwrite=True) as tmp:
                tmp.write_text(str(i))
    assert (out / "checkpoints" / "last.pt").read_text() == "2"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]
    assert _hidden(tmp_path) == []


def test_failed_write_waits_for_zarr_background_writes_before_removing(tmp_path):
    """A write still running on zarr's I/O loop when the block fails would recreate the temporary after its removal;
    the removal waits for the loop's pending tasks first."""
    import asyncio

    import zarr.core.sync as zsync

    from omicsclip.io.atomic import atomic_path

    loop = zsync._get_loop()

    async def late_write(folder):
        await asyncio.sleep(0.3)
        (folder / "chunk").parent.mkdir(parents=True, exist_ok=True)
        (folder / "chunk").write_text("late")

    def write_then_fail() -> None:
        with atomic_path(tmp_path / "out.zarr") as tmp:
            tmp.mkdir()
            asyncio.run_coroutine_threadsafe(late_write(tmp / "group"), loop)
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_then_fail()
    import time

    time.sleep(0.5)  # past the late write
    assert list(tmp_path.iterdir()) == []
