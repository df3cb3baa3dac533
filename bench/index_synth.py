"""Synthetic, clustered, L2-normalised embeddings for index tests and benchmarks.

Real contrastive embeddings of cells are not uniform noise: cells form types of very different sizes, each with a
low-dimensional continuous state inside it. Approximate indices behave very differently on such data than on
isotropic Gaussians, so tests and benchmarks draw from this mixture of low-rank Gaussians on the sphere instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ClusteredEmbeddings:
    """A fixed mixture of low-rank Gaussian clusters in ``dim`` dimensions, projected onto the unit sphere.

    Parameters
    ----------
    dim
        Embedding dimension.
    n_clusters
        Number of clusters ("cell types"); sizes follow a Dirichlet draw so some are rare.
    intrinsic_dim
        Rank of the within-cluster variation (the continuous cell state).
    spread
        Scale of the within-cluster variation relative to the unit-norm cluster centres.
    noise
        Isotropic noise added in all ``dim`` directions.
    seed
        Seed of the mixture itself (centres, loadings, cluster sizes).
    """

    def __init__(self, dim: int = 64, *, n_clusters: int = 50, intrinsic_dim: int = 10,
                 spread: float = 0.35, noise: float = 0.03, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        centres = rng.standard_normal((n_clusters, dim))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        loadings = rng.standard_normal((n_clusters, dim, intrinsic_dim)) / np.sqrt(dim)
        self.loadings = loadings * spread * rng.uniform(0.5, 1.5, size=(n_clusters, 1, 1))
        self.weights = rng.dirichlet(np.full(n_clusters, 2.0))
        self.intrinsic_dim = intrinsic_dim
        self.noise = noise

    def sample(self, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` unit vectors (float32) and their cluster labels."""
        rng = np.random.default_rng(seed)
        labels = rng.choice(len(self.weights), size=n, p=self.weights)
        z = rng.standard_normal((n, self.intrinsic_dim))
        x = self.centres[labels] + np.einsum("ndk,nk->nd", self.loadings[labels], z)
        x += self.noise * rng.standard_normal((n, self.dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32), labels

    def iter_chunks(self, n: int, chunk: int, *, seed: int) -> Iterator[np.ndarray]:
        """Yield ``n`` vectors in chunks of ``chunk`` rows, generated on the fly (bounded memory)."""
        for i, start in enumerate(range(0, n, chunk)):
            yield self.sample(min(chunk, n - start), seed=seed * 1_000_003 + i)[0]
