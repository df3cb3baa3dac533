"""Baselines on synthetic data where the protein is a linear map of the RNA."""

from __future__ import annotations

import numpy as np
import pytest

from omicsclip.evaluation import metrics as M
from omicsclip.evaluation.baselines import CCABaseline, RidgeBaseline, fit_pca, fit_scaler, scale


def _linear_pair(n=1200, n_genes=60, rank=8, n_prot=6, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, rank))
    rna = z @ rng.normal(size=(rank, n_genes)) + 0.05 * rng.normal(size=(n, n_genes))
    prot = z @ rng.normal(size=(rank, n_prot)) + 3.0 + noise * rng.normal(size=(n, n_prot))
    return rna, prot


def test_pca_captures_low_rank_structure():
    rna, _ = _linear_pair()
    pca = fit_pca(rna[:1000], n_components=20, seed=0)
    assert pca.n_components_ == 20
    assert pca.explained_variance_ratio_[:8].sum() > 0.99
    assert pca.transform(rna[1000:]).shape == (200, 20)
    # components capped by the rank bound of tiny data
    assert fit_pca(rna[:5], n_components=50).n_components_ == 4


def test_ridge_recovers_an_exact_linear_map():
    rna, prot = _linear_pair()
    pca = fit_pca(rna[:1000], n_components=20)
    tr, te = pca.transform(rna[:1000]), pca.transform(rna[1000:])
    ridge = RidgeBaseline().fit(tr, prot[:1000])
    pred = ridge.predict_protein(te)
    assert np.nanmin(M.protein_pearson(pred, prot[1000:])) > 0.99
    assert M.protein_rmse(pred, prot[1000:]) < 0.1 * prot.std()
    a, b = ridge.match_space(te, prot[1000:])
    res = M.retrieval_metrics(a, b)
    assert res["foscttm"] < 0.01
    assert res["recall_at_10"] > 0.9


def test_ridge_beats_mean_under_noise():
    rna, prot = _linear_pair(noise=1.0, seed=1)
    pca = fit_pca(rna[:1000], n_components=20)
    ridge = RidgeBaseline().fit(pca.transform(rna[:1000]), prot[:1000])
    pred = ridge.predict_protein(pca.transform(rna[1000:]))
    mean_rmse = M.protein_rmse(np.broadcast_to(prot[:1000].mean(0), (200, 6)), prot[1000:])
    assert M.protein_rmse(pred, prot[1000:]) < 0.7 * mean_rmse


def test_cca_matches_linearly_related_modalities():
    rna, prot = _linear_pair(seed=2)
    pca = fit_pca(rna[:1000], n_components=20)
    tr, te = pca.transform(rna[:1000]), pca.transform(rna[1000:])
    cca = CCABaseline().fit(tr, prot[:1000])
    assert cca.cca_.n_components == 6  # as many as proteins
    x_c, y_c = cca.transform(te, prot[1000:])
    assert x_c.shape == y_c.shape == (200, 6)
    corr = [np.corrcoef(x_c[:, i], y_c[:, i])[0, 1] for i in range(6)]
    assert min(corr) > 0.99
    res = M.retrieval_metrics(x_c, y_c)
    assert res["foscttm"] < 0.01
    np.testing.assert_allclose(cca.transform_rna(te), x_c)


def test_cca_on_unrelated_modalities_is_chance():
    rng = np.random.default_rng(3)
    rna, prot = rng.normal(size=(1200, 20)), rng.normal(size=(1200, 5))
    cca = CCABaseline().fit(rna[:1000], prot[:1000])
    res = M.retrieval_metrics(*cca.transform(rna[1000:], prot[1000:]))
    assert res["foscttm"] == pytest.approx(0.5, abs=0.06)


def test_scaler_roundtrip_and_constant_features():
    x = np.c_[np.arange(10.0), np.full(10, 4.0)]
    s = fit_scaler(x)
    z = scale(s, x)
    assert z[:, 0].mean() == pytest.approx(0)
    assert z[:, 0].std() == pytest.approx(1)
    assert np.all(z[:, 1] == 0)
    np.testing.assert_allclose(s.inverse_transform(z), x)
    assert scale(s, x.astype(np.float32)).dtype == np.float64  # PCs come as float32; scaling stays double


def test_scaling_matches_the_plain_formula():
    """scikit-learn's StandardScaler gives (x - mean) / std with population std, constant features scale 1."""
    rng = np.random.default_rng(4)
    x = np.c_[rng.normal(3, 2, size=(200, 5)), np.full(200, -1.5)].astype(np.float32)
    x64 = x.astype(np.float64)
    sd = x64.std(0)
    want = (x64 - x64.mean(0)) / np.where(sd > 0, sd, 1.0)
    np.testing.assert_allclose(scale(fit_scaler(x), x), want, rtol=1e-12, atol=1e-12)


def test_one_protein_panel_keeps_its_protein_axis():
    rna, prot = _linear_pair(n_prot=1, noise=0.5, seed=5)
    ridge = RidgeBaseline().fit(rna[:1000], prot[:1000])
    assert ridge.predict_protein(rna[1000:]).shape == (200, 1)
    a, b = ridge.match_space(rna[1000:], prot[1000:])
    assert a.shape == b.shape == (200, 1)
