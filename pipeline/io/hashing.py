"""sha256 digests of files and folders (provenance, data and model fingerprints, index integrity)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

_BLOCK = 8 << 20


def sha256_file(path: str | Path, cancel: threading.Event | None = None) -> str:
    """Return the sha256 hex digest of one file, read in 8 MiB blocks.

    Parameters
    ----------
    path
        The file.
    cancel
        Stops early when set (the result is then ``""``); ingest sets it when another step failed.

    Returns
    -------
    str
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            if cancel is not None and cancel.is_set():
                return ""
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | Path, cancel: threading.Event | None = None) -> str:
    """Return a file's sha256, or for a folder the sha256 over its files.

    A folder's files are hashed in sorted order (relative path, NUL, the file's digest), so renaming, adding
    or changing any file changes the result.

    Parameters
    ----------
    path
        A file or folder.
    cancel
        Stops early when set (the result is then ``""``).

    Returns
    -------
    str
        The hex digest.
    """
    root = Path(path)
    if not root.is_dir():
        return sha256_file(root, cancel)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        digest = sha256_file(p, cancel)
        if not digest:
            return ""
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(digest.encode())
    return h.hexdigest()
