"""Baselines evaluated next to omicsclip on the same held-out cells: PCA, CCA and ridge RNA→protein.

All baselines start from the model's own preprocessing (HVG, normalised, log, scaled RNA; CLR protein) and are
fitted on training cells only:

- **PCA**: ``n_pcs`` principal components of the scaled highly variable genes (not the model's own PCs).
  RNA-only, so it cannot match across modalities; used for the few-label classifier.
- **CCA**: scikit-learn CCA between the RNA PCs and the standardised CLR protein; cells are matched by cosine
  similarity of their canonical variates (no imputation: scikit-learn's CCA ``predict`` is not a least-squares
  regression, so ridge is the imputation baseline).
- **Ridge**: ``RidgeCV`` from RNA PCs to CLR protein; cells are matched by cosine similarity of predicted and
  measured standardised protein; its prediction is the imputation.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))


@dataclass
class Standardiser:
    """Per-feature centring and scaling fitted on training rows (constant features get scale 1)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardiser:
        x = np.asarray(x, dtype=np.float64)
        sd = x.std(0)
        return cls(mean=x.mean(0), scale=np.where(sd > 0, sd, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.scale + self.mean


def fit_pca(x_train: np.ndarray, n_components: int = 50, *, seed: int = 0):
    """PCA fitted on training rows (``n_components`` capped by the data's rank bound).

    Parameters
    ----------
    x_train
        Preprocessed RNA of the training cells (cells × HVGs), dense.
    n_components
        Number of principal components.
    seed
        Seed of the randomised solver.

    Returns
    -------
    sklearn.decomposition.PCA
        Fitted; ``.transform(x)`` gives the PCs of any cells preprocessed the same way.
    """
    from sklearn.decomposition import PCA

    x_train = np.asarray(x_train, dtype=np.float32)
    k = int(min(n_components, x_train.shape[1], x_train.shape[0] - 1))
    if k < 1:
        raise ValueError(f"PCA needs at least 2 cells and 1 feature, got {x_train.shape}")
    if k < n_components:
        log.info("PCA: using %d components (data shape %s)", k, x_train.shape)
    return PCA(n_components=k, random_state=seed).fit(x_train)


class CCABaseline:
    """Canonical correlation analysis between RNA PCs and standardised CLR protein.

    Parameters
    ----------
    n_components
        Canonical pairs (default: as many as proteins, at most the number of RNA PCs).
    max_iter
        Iterations of scikit-learn's NIPALS solver per component.
    """

    def __init__(self, n_components: int | None = None, *, max_iter: int = 1000) -> None:
        self.n_components = n_components
        self.max_iter = max_iter

    def fit(self, rna_pcs: np.ndarray, prot_clr: np.ndarray) -> CCABaseline:
        """Fit on training cells (``rna_pcs``: cells × PCs, ``prot_clr``: cells × proteins, CLR)."""
        from sklearn.cross_decomposition import CCA

        self.prot_std_ = Standardiser.fit(prot_clr)
        y = self.prot_std_.transform(prot_clr)
        limit = min(rna_pcs.shape[1], y.shape[1], rna_pcs.shape[0] - 1)
        k = limit if self.n_components is None else int(min(self.n_components, limit))
        self.cca_ = CCA(n_components=k, scale=True, max_iter=self.max_iter)
        with warnings.catch_warnings():  # NIPALS may stop at max_iter on tiny trailing components
            warnings.simplefilter("ignore")
            self.cca_.fit(np.asarray(rna_pcs, dtype=np.float64), y)
        return self

    def transform(self, rna_pcs: np.ndarray, prot_clr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical variates ``(rna_scores, prot_scores)`` of paired cells (rows aligned)."""
        x_c, y_c = self.cca_.transform(
            np.asarray(rna_pcs, dtype=np.float64), self.prot_std_.transform(prot_clr)
        )
        return x_c, y_c

    def transform_rna(self, rna_pcs: np.ndarray) -> np.ndarray:
        """RNA canonical variates only."""
        return self.cca_.transform(np.asarray(rna_pcs, dtype=np.float64))


class RidgeBaseline:
    """Ridge regression from RNA PCs to CLR protein with the penalty chosen by efficient leave-one-out CV.

    Parameters
    ----------
    alphas
        Candidate ridge penalties (features are standardised first, so one grid suits every dataset).
    """

    def __init__(self, alphas: tuple[float, ...] = RIDGE_ALPHAS) -> None:
        self.alphas = alphas

    def fit(self, rna_pcs: np.ndarray, prot_clr: np.ndarray) -> RidgeBaseline:
        """Fit on training cells."""
        from sklearn.linear_model import RidgeCV

        self.x_std_ = Standardiser.fit(rna_pcs)
        self.prot_std_ = Standardiser.fit(prot_clr)
        self.ridge_ = RidgeCV(alphas=self.alphas).fit(self.x_std_.transform(rna_pcs),
                                                       np.asarray(prot_clr, dtype=np.float64))
        log.debug("ridge alpha=%s", self.ridge_.alpha_)
        return self

    def predict_protein(self, rna_pcs: np.ndarray) -> np.ndarray:
        """Predicted CLR protein."""
        return self.ridge_.predict(self.x_std_.transform(rna_pcs))

    def match_space(self, rna_pcs: np.ndarray, prot_clr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(predicted, measured)`` protein, both standardised with the training cells' statistics, for
        cosine matching."""
        return (self.prot_std_.transform(self.predict_protein(rna_pcs)),
                self.prot_std_.transform(prot_clr))
