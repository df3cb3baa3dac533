"""Shared fixtures: real-data location (tests skip cleanly without it) and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_h5ad(name: str) -> Path:
    """Path of ``../shared/data/<name>/<name>.h5ad``; skips the test when it is absent."""
    p = SHARED_DATA / name / f"{name}.h5ad"
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """Keep tests from oversubscribing the 2-core CI machine."""
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
