"""Write outputs to a temporary sibling path and rename into place only when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omicsclip.errors import InputError


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
        raise InputError(f"{path} already exists; pass --overwrite to replace it")
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


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False,
                inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path``, on error delete it.

    An existing ``path`` (only allowed with ``overwrite``) is kept until the new output is complete; it is never
    one that holds an input (see :func:`check_writable`).
    """
    path = Path(os.path.abspath(path))  # '--out .' works; a symlink is replaced as a link, not followed
    check_writable(path, overwrite=overwrite, inputs=inputs)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"internal error: {tmp} was not written")
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
