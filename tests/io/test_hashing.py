"""sha256 of files and folders: equal to hashlib, sensitive to names and content, cancellable."""

from __future__ import annotations

import hashlib
import threading

from omicsclip.io.hashing import sha256_file, sha256_tree


def test_file_digest_is_hashlib_and_folder_digest_tracks_names_and_content(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    a, b = tmp_path / "d" / "a.bin", tmp_path / "d" / "sub" / "b.bin"
    a.write_bytes(b"x" * 10_000)
    b.write_bytes(b"y")
    assert sha256_file(a) == hashlib.sha256(b"x" * 10_000).hexdigest() == sha256_tree(a)
    before = sha256_tree(tmp_path / "d")
    assert sha256_tree(tmp_path / "d") == before  # deterministic
    b.rename(tmp_path / "d" / "sub" / "c.bin")
    renamed = sha256_tree(tmp_path / "d")
    assert renamed != before
    (tmp_path / "d" / "sub" / "c.bin").write_bytes(b"z")
    assert sha256_tree(tmp_path / "d") not in (before, renamed)


def test_cancelled_hash_is_empty(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    stop = threading.Event()
    stop.set()
    assert sha256_file(f, stop) == ""
    assert sha256_tree(tmp_path, stop) == ""
