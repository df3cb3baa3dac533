"""Write outputs to a temporary sibling path and rename into place only when complete, under an output lock.

Every writer of an output ``NAME`` takes :func:`output_lock` (an exclusive ``flock`` on ``.NAME.lock`` beside it)
from its writability check to the final rename, so a second process writing the same output is refused with one
line instead of silently replacing the first one's result. The kernel drops the lock when its holder dies, so a
killed run (``kill -9``) never leaves a lock that blocks. Temporaries are named ``.NAME.tmp-<host>-<pid>-<hex>``
(``.NAME.old-...`` for a replaced output); the next writer of ``NAME`` removes those of dead processes on this host.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omicsclip.errors import InputError

log = logging.getLogger(__name__)

_TEMP_KINDS = ("tmp", "old")


def check_writable(path: Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse an output path that may not be written, before any work is done.

    An existing output is refused unless ``overwrite`` is set, and a folder that is or holds one of the
    ``inputs`` or the working directory is never replaced (replacing ``path`` deletes everything under it).
    The output's folder must exist and be writable. A symlinked output is replaced as a link (its target is
    left alone).

    Parameters
    ----------
    path
        The output file or folder.
    overwrite
        Whether an existing output may be replaced.
    inputs
        Paths the command reads (``None`` entries are skipped).

    Raises
    ------
    InputError
        Naming the path and what to do.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite (Python: overwrite=True) to replace it")
    out = Path(os.path.abspath(path))  # not resolve(): a symlink stays the link that gets replaced
    if out.parent == out:
        raise InputError(f"{path}: not a valid output path")
    if not out.parent.is_dir():
        raise InputError(f"{path.parent}: output directory does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise InputError(f"{path.parent}: output directory is not writable")
    if path.exists() and not path.is_symlink():
        real = out.resolve()
        for p in (Path.cwd(), *(Path(x) for x in inputs if x is not None)):
            r = p.resolve()
            if r == real or real in r.parents:
                what = "the working directory" if p == Path.cwd() else f"the input {p}"
                raise InputError(f"{path}: replacing it would delete {what}; choose another output")


IO_SETTLE_SECONDS = 10.0  # longest wait for a library's background writes before a temporary is removed


def _settle_background_io(timeout: float = IO_SETTLE_SECONDS) -> None:
    """Wait until zarr's I/O event loop has no pending task (at most ``timeout`` seconds).

    Zarr (3.x) writes on an event-loop thread; when the main thread is interrupted (SIGTERM, Ctrl-C, an error)
    while it waits on a write, that write goes on. Removing the temporary before it ends lets it recreate folders
    (seen: 1 interrupted ingest in 40 left its temporary behind). Nothing happens if zarr was never used.
    """
    import asyncio
    import sys

    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0] if sync is not None else None
    if loop is None or not loop.is_running():
        return

    async def pending() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(pending(), loop).result(timeout + 1.0)
    except Exception as exc:  # noqa: BLE001 - best effort: the removal below still runs and is retried
        log.debug("background I/O did not settle: %s", exc)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        _settle_background_io()
        for _ in range(5):  # a library's I/O thread may still be finishing a write into the folder
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                return
            time.sleep(0.05)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def temp_sibling(path: str | Path, kind: str = "tmp") -> Path:
    """Return a new temporary name beside ``path``: ``.NAME.<kind>-<host>-<pid>-<hex>``.

    Parameters
    ----------
    path
        The output the temporary stands in for.
    kind
        ``"tmp"`` (the output being written) or ``"old"`` (a replaced output on its way out).

    Returns
    -------
    Path
        A path that does not exist yet; its owner (host and pid) can be read back from the name.
    """
    if kind not in _TEMP_KINDS:
        raise ValueError(f"unknown temporary kind {kind!r}")
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _owner(name: str, prefix: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary's name, or ``None`` when it is not one of ours."""
    parts = name[len(prefix):].rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _size(p: Path) -> int:
    if p.is_dir() and not p.is_symlink():
        return sum(f.lstat().st_size for f in p.rglob("*") if f.is_file())
    return p.lstat().st_size


def remove_stale_temporaries(path: str | Path) -> int:
    """Remove the temporaries of ``path`` left by dead processes on this host (call with its lock held).

    Temporaries of other hosts are left alone (their owner cannot be checked from here), with a warning.

    Parameters
    ----------
    path
        The output whose ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings are looked at.

    Returns
    -------
    int
        How many were removed.
    """
    path = Path(os.path.abspath(path))
    host, me, removed, size = _host(), os.getpid(), 0, 0
    for kind in _TEMP_KINDS:
        prefix = f".{path.name}.{kind}-"
        try:
            candidates = sorted(path.parent.glob(f"{_glob_escape(prefix)}*"))
        except OSError:
            return removed
        for p in candidates:
            owner = _owner(p.name, prefix)
            if owner is None or owner[1] == me and owner[0] == host:
                continue
            if owner[0] != host:
                log.warning("%s: left by a process on host %s; not removed (delete it if that run is over)",
                            p, owner[0])
                continue
            if _alive(owner[1]):
                continue
            try:
                size += _size(p)
            except OSError:
                pass
            _remove(p)
            removed += 1
    if removed:
        log.info("removed %d stale temporar%s of %s left by killed runs (%.1f MB)", removed,
                 "y" if removed == 1 else "ies", path, size / 1e6)
    return removed


def _glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in s)


def lock_file(path: str | Path) -> Path:
    """Return the lock file of an output: ``.NAME.lock`` beside it.

    Parameters
    ----------
    path
        The output.

    Returns
    -------
    Path
        The lock file's path (present only while a writer holds it, or after one was killed).
    """
    path = Path(os.path.abspath(path))
    return path.with_name(f".{path.name}.lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        return ""
    return f" (pid {text[0]})" if text and text[0].isdigit() else ""


def lock_held(path: str | Path) -> bool:
    """Whether a live process holds the output lock of ``path`` (see :func:`output_lock`).

    Parameters
    ----------
    path
        The output.

    Returns
    -------
    bool
        ``True`` while another writer is at work on ``path``.
    """
    lock = lock_file(path)
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


@contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold the exclusive writer's lock of an output (``.NAME.lock`` beside it) for the block.

    Not re-entrant: a second lock on the same output, also from the same process, is refused. The lock file is
    removed on release; the kernel drops the lock itself when its holder dies.

    Parameters
    ----------
    path
        The output file or folder (its folder must exist).

    Raises
    ------
    InputError
        Another process holds the lock.
    """
    path = Path(os.path.abspath(path))
    lock = lock_file(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise InputError(f"{lock}: cannot create the output's lock file ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise InputError(f"{path}: another process{who} is writing it; wait for it to finish or choose "
                             f"another output") from None
        except OSError as exc:  # a file system without locks: go on unlocked
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            log.warning("%s: the file system does not support locks; concurrent writers are not detected", lock)
            break
        try:  # the holder before us may have unlinked the file we opened: then lock the new one
            st = os.stat(lock)
            same = (st.st_ino, st.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {_host()}\n".encode(), 0)
        except OSError:
            pass
        yield
    finally:
        try:
            lock.unlink(missing_ok=True)  # while still locked, so no one can lock the unlinked file in between
        except OSError:
            pass
        os.close(fd)


@contextmanager
def claim_output(path: str | Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Check that ``path`` may be written, hold its lock for the block and clear stale temporaries first.

    Parameters
    ----------
    path
        The output file or folder.
    overwrite
        Whether an existing output may be replaced.
    inputs
        Paths the command reads (see :func:`check_writable`).

    Yields
    ------
    Path
        The absolute output path.

    Raises
    ------
    InputError
        The output may not be written or another process is writing it.
    """
    path = Path(os.path.abspath(path))
    check_writable(path, overwrite=overwrite, inputs=inputs)
    with output_lock(path):
        check_writable(path, overwrite=overwrite, inputs=inputs)  # a writer may have finished meanwhile
        remove_stale_temporaries(path)
        yield path


def replace_output(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``path`` (hold :func:`claim_output`); an existing ``path`` needs ``overwrite``.

    Parameters
    ----------
    tmp
        The complete temporary output.
    path
        The final output.
    overwrite
        Whether an existing ``path`` may be replaced; refused otherwise (it appeared after the first check).

    Raises
    ------
    InputError
        ``path`` appeared meanwhile and may not be replaced.
    """
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise InputError(f"{path} was written by another process meanwhile; pass --overwrite "
                             "(Python: overwrite=True) to replace it")
        old = temp_sibling(path, "old")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False,
                inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path``, on error delete it.

    An existing ``path`` (only allowed with ``overwrite``) is kept until the new output is complete; it is never
    one that holds an input (see :func:`check_writable`). The output's lock is held throughout
    (:func:`claim_output`): a second writer of the same output gets a one-line :class:`InputError`.
    """
    with claim_output(path, overwrite=overwrite, inputs=inputs) as path:  # '--out .' works; symlinks not followed
        tmp = temp_sibling(path)
        try:
            yield tmp
            if not tmp.exists():
                raise RuntimeError(f"internal error: {tmp} was not written")
            replace_output(tmp, path, overwrite=overwrite)
        except BaseException:
            _remove(tmp)
            raise
