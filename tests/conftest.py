"""Shared fixtures: real-data location (tests skip cleanly without it) and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_bench(name: str):
    """Import ``bench/<name>.py`` (benchmark scripts and their helpers are not part of the package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def shared_h5ad(name: str) -> Path:
    """Path of ``../shared/data/<name>/<name>.h5ad``; skips the test when it is absent."""
    p = SHARED_DATA / name / f"{name}.h5ad"
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


# A tiny model and data set for fast training tests (seconds on one CPU thread).
TINY = ["preprocess.n_hvg=40", "model.rna_hidden=[32]", "model.prot_hidden=[16]", "model.embed_dim=8",
        "train.batch_size=64", "train.epochs=4", "train.warmup_steps=4", "train.num_threads=1",
        "train.checkpoint_every=5", "train.device=cpu"]


def tiny_store(path, n_cells=300, n_genes=80, n_proteins=6, seed=0):
    """Write a small synthetic paired store (4 cell types) and return its path."""
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic

    return write_store(make_synthetic(n_cells=n_cells, n_genes=n_genes, n_proteins=n_proteins, n_types=4,
                                      seed=seed), path)


def pooled_two_labs(path, *, genes_b_from=30, prot_a=7, n=300, seed=5):
    """Pool two labs of one synthetic population (90 genes, 10 proteins) into ``path/pooled.zarr``.

    Lab A measured genes 0-59 and proteins ``0..prot_a-1``, lab B genes ``genes_b_from``-89 and proteins 3-9.
    Returns the pooled store's path and the two labs' data.
    """
    import numpy as np

    from omicsclip.io.pool import pool_stores
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic

    d = make_synthetic(n_cells=2 * n, n_genes=90, n_proteins=10, n_types=4, seed=seed)
    a, b = d.subset(np.arange(n)), d.subset(np.arange(n, 2 * n))
    a.rna, a.genes, a.prot, a.proteins = a.rna[:, :60], a.genes.iloc[:60], a.prot[:, :prot_a], a.proteins.iloc[:prot_a]
    b.rna, b.genes = b.rna[:, genes_b_from:], b.genes.iloc[genes_b_from:]
    b.prot, b.proteins = b.prot[:, 3:], b.proteins.iloc[3:]
    stores = [write_store(a, path / "labA.zarr"), write_store(b, path / "labB.zarr")]
    return pool_stores(stores, path / "pooled.zarr"), a, b


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """Keep tests from oversubscribing the 2-core CI machine."""
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return
