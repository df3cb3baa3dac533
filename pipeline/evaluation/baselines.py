"""Baselines evaluated next to omicsclip on the same held-out cells: PCA, CCA and ridge RNA→protein.

All baselines start from the model's own preprocessing (HVG, normalised, log, scaled RNA; CLR protein) and are
fitted on training cells only:

- **PCA**: ``n_pcs`` principal components of the scaled highly variable genes (not the model's own PCs).
  RNA-only, so it cannot match across modalities; used for the few-label classifier.
- **CCA**: scikit-learn CCA between the RNA PCs and the standardised CLR protein; cells are matched by cosine
  similarity of their canonical variates (no imputation: scikit-learn's CCA ``predict`` is not a least-squares
  regression, so ridge is the imputation baseline).
- **Ridge**: ``RidgeCV`` from standardised RNA PCs to CLR protein; cells are matched by cosine similarity of predicted and
  measured standardised protein; its prediction is the imputation.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))


def _float64(x: np.ndarray) -> np.ndarray:
    """``x`` as float64: the scalers and regressions always work in double precision (PCs come as float32)."""
    return np.asarray(x, dtype=np.float64)


def fit_scaler(x: np.ndarray) -> StandardScaler:
    """Fit per-feature centring and scaling on training rows (constant features get scale 1).

    Parameters
    ----------
    x
        Training rows (cells x features); fitted in float64.

    Returns
    -------
    sklearn.preprocessing.StandardScaler
        Fitted; pass float64 input to ``transform`` (use :func:`scale`) to keep double precision.
    """
    return StandardScaler().fit(_float64(x))


def scale(scaler: StandardScaler, x: np.ndarray) -> np.ndarray:
    """Apply a scaler from :func:`fit_scaler` in float64 (a float32 input would otherwise stay float32)."""
    return scaler.transform(_float64(x))


def fit_pca(x_train: np.ndarray, n_components: int, *, seed: int = 0):
    """Fit a PCA on training rows (``n_components`` capped by the data's rank bound).

    Parameters
    ----------
    x_train
        Preprocessed RNA of the training cells (cells × HVGs), dense.
    n_components
        Number of principal components (``evaluate.n_pcs``).
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
        """Fit on training cells.

        Parameters
        ----------
        rna_pcs
            RNA principal components (cells × PCs).
        prot_clr
            CLR protein (cells × proteins); standardised on these cells first.
        """
        from sklearn.cross_decomposition import CCA

        self.prot_scaler_ = fit_scaler(prot_clr)
        y = scale(self.prot_scaler_, prot_clr)
        limit = min(rna_pcs.shape[1], y.shape[1], rna_pcs.shape[0] - 1)
        k = limit if self.n_components is None else int(min(self.n_components, limit))
        self.cca_ = CCA(n_components=k, scale=True, max_iter=self.max_iter)
        with warnings.catch_warnings():  # NIPALS may stop at max_iter on tiny trailing components
            warnings.simplefilter("ignore")
            self.cca_.fit(_float64(rna_pcs), y)
        return self

    def transform(self, rna_pcs: np.ndarray, prot_clr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the canonical variates ``(rna_scores, prot_scores)`` of paired cells (rows aligned)."""
        x_c, y_c = self.cca_.transform(_float64(rna_pcs), scale(self.prot_scaler_, prot_clr))
        return x_c, y_c

    def transform_rna(self, rna_pcs: np.ndarray) -> np.ndarray:
        """Return the RNA canonical variates only."""
        return self.cca_.transform(_float64(rna_pcs))


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
        """Fit on training cells.

        Parameters
        ----------
        rna_pcs
            RNA principal components (cells × PCs); standardised on these cells first.
        prot_clr
            CLR protein (cells × proteins), the regression target.
        """
        from sklearn.linear_model import RidgeCV

        self.x_scaler_ = fit_scaler(rna_pcs)
        self.prot_scaler_ = fit_scaler(prot_clr)
        self.ridge_ = RidgeCV(alphas=self.alphas).fit(scale(self.x_scaler_, rna_pcs), _float64(prot_clr))
        log.debug("ridge alpha=%s", self.ridge_.alpha_)
        return self

    def predict_protein(self, rna_pcs: np.ndarray) -> np.ndarray:
        """Return the predicted CLR protein of cells (rows of RNA PCs), cells × proteins."""
        pred = self.ridge_.predict(scale(self.x_scaler_, rna_pcs))
        return pred.reshape(len(pred), -1)  # scikit-learn drops the column axis of a one-protein panel

    def match_space(self, rna_pcs: np.ndarray, prot_clr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(predicted, measured)`` protein of paired cells, for cosine matching.

        Both are standardised with the training cells' protein statistics.
        """
        return scale(self.prot_scaler_, self.predict_protein(rna_pcs)), scale(self.prot_scaler_, prot_clr)
