"""Parity of the chunked metrics with plain O(n²) numpy references, and known answers."""

from __future__ import annotations

import numpy as np
import pytest

from omicsclip.evaluation import metrics as M


def _pair(n=300, d=16, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = a + noise * rng.normal(size=(n, d))
    return a.astype(np.float32), b.astype(np.float32)


def _naive_dist(a, b, metric):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if metric == "cosine":
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return 1.0 - a @ b.T
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _naive_foscttm(a, b, metric):
    d = _naive_dist(a, b, metric)
    n = len(d)
    ab = [(d[i] < d[i, i]).sum() / (n - 1) for i in range(n)]  # row i: a_i against all b
    ba = [(d[:, j] < d[j, j]).sum() / (n - 1) for j in range(n)]  # column j: b_j against all a
    return (np.mean(ab) + np.mean(ba)) / 2


def _naive_recall(a, b, k, metric):
    d = _naive_dist(a, b, metric)
    n = len(d)
    ab = np.mean([i in np.argsort(d[i])[:k] for i in range(n)])
    ba = np.mean([j in np.argsort(d[:, j])[:k] for j in range(n)])
    return (ab + ba) / 2


def _naive_match(a, b, temperature, top_k):
    s = 1.0 - _naive_dist(a, b, "cosine")

    def one(sim):
        p = np.zeros_like(sim)
        for i in range(len(sim)):
            top = np.argsort(-sim[i])[:top_k]
            w = np.exp(sim[i, top] / temperature)
            p[i, top] = w / w.sum()
        return np.mean(np.diag(p) / p.sum(1))

    return (one(s) + one(s.T)) / 2


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [None, 7, 1000])
def test_foscttm_matches_naive(metric, chunk):
    a, b = _pair(noise=2.0)
    ref = _naive_foscttm(a, b, metric)
    assert 0.01 < ref < 0.4  # the test data is informative but not trivial
    assert M.foscttm(a, b, metric=metric, chunk_size=chunk) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_recall_matches_naive(metric):
    a, b = _pair(n=250, noise=1.2, seed=1)
    got = M.recall_at_k(a, b, (1, 10, 50), metric=metric, chunk_size=33)
    for k in (1, 10, 50):
        assert got[k] == pytest.approx(_naive_recall(a, b, k, metric), abs=1e-12)
    assert got[1] < got[10] < got[50]


@pytest.mark.parametrize("top_k", [5, 1000])
def test_match_score_matches_naive(top_k):
    a, b = _pair(n=120, noise=0.8, seed=2)
    got = M.match_score(a, b, temperature=0.1, top_k=top_k, chunk_size=17)
    assert got == pytest.approx(_naive_match(a, b, 0.1, top_k), rel=1e-6)  # float32 similarities


def test_identical_embeddings_are_perfect():
    a, _ = _pair(n=200)
    res = M.retrieval_metrics(a, a.copy(), labels=np.arange(200) % 3, temperature=0.001)
    assert res["foscttm"] == 0.0
    assert res["recall_at_1"] == res["recall_at_10"] == res["recall_at_50"] == 1.0
    assert res["celltype_match"] == 1.0
    assert res["match_score"] > 0.99


def test_random_embeddings_are_chance():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 2000, 8))
    res = M.retrieval_metrics(a, b)
    assert res["foscttm"] == pytest.approx(0.5, abs=0.02)
    assert res["recall_at_50"] == pytest.approx(50 / 2000, abs=0.01)
    assert res["match_score"] < 5 / 2000


def test_collapsed_embedding_is_not_rewarded():
    a = np.ones((50, 4))
    res = M.retrieval_metrics(a, a)
    assert res["foscttm"] == 0.5
    assert res["recall_at_10"] == 0.0


def test_retrieval_metrics_agree_with_single_metrics():
    a, b = _pair(n=150, seed=4)
    labels = np.repeat(np.arange(5), 30)
    res = M.retrieval_metrics(a, b, labels=labels, temperature=0.2)
    assert res["foscttm"] == M.foscttm(a, b)
    assert res["recall_at_10"] == M.recall_at_k(a, b, (10,))[10]
    assert res["match_score"] == M.match_score(a, b, temperature=0.2)
    assert res["celltype_match"] == M.celltype_match(a, b, labels)


def test_celltype_match_naive():
    a, b = _pair(n=100, noise=2.0, seed=5)
    labels = np.arange(100) % 4
    d = _naive_dist(a, b, "cosine")
    ref = ((labels[d.argmin(1)] == labels).mean() + (labels[d.argmin(0)] == labels).mean()) / 2
    assert M.celltype_match(a, b, labels) == pytest.approx(ref)


def test_best_match_temperature_prefers_sharp_for_clean_pairs():
    a, b = _pair(n=200, noise=0.05, seed=6)
    t = M.best_match_temperature(a, b)
    assert t in M.TEMPERATURE_GRID
    assert M.match_score(a, b, temperature=t) >= M.match_score(a, b, temperature=1.0)
    assert t <= 0.05


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        M.foscttm(np.zeros((5, 3)), np.zeros((4, 3)))


def test_fewlabel_accuracy_separable_and_fraction():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=5, size=(4, 10))
    ytr = rng.integers(0, 4, 2000)
    yte = rng.integers(0, 4, 500)
    xtr = centers[ytr] + rng.normal(size=(2000, 10))
    xte = centers[yte] + rng.normal(size=(500, 10))
    assert M.fewlabel_accuracy(xtr, ytr, xte, yte, fraction=0.01) > 0.95
    noise = rng.normal(size=(2000, 10))
    assert M.fewlabel_accuracy(noise, ytr, rng.normal(size=(500, 10)), yte, fraction=0.01) < 0.45


def test_labelled_subset_is_stratified_and_sized():
    y = np.array(["a"] * 900 + ["b"] * 90 + ["c"] * 10)
    idx = M._labelled_subset(y, 20, np.random.default_rng(0))
    assert len(idx) == 20
    assert len(set(idx)) == 20
    got = {c: int((y[idx] == c).sum()) for c in "abc"}
    assert got["c"] >= 1
    assert got["b"] >= 1
    assert got["a"] >= 16


def test_protein_pearson_and_rmse():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(400, 5))
    pred = true.copy()
    pred[:, 1] = 3 * true[:, 1] + 2  # correlation is scale-free
    pred[:, 2] = -true[:, 2]
    pred[:, 3] = 1.0  # constant prediction: undefined correlation
    r = M.protein_pearson(pred, true)
    assert r[0] == pytest.approx(1)
    assert r[1] == pytest.approx(1)
    assert r[2] == pytest.approx(-1)
    assert np.isnan(r[3])
    ref = [np.corrcoef(pred[:, 4], true[:, 4])[0, 1]]
    assert r[4] == pytest.approx(ref[0])
    assert M.protein_rmse(true, true) == 0.0
    assert M.protein_rmse(true + 0.5, true) == pytest.approx(0.5)


def test_knn_impute_matches_naive():
    from omicsclip.index.impute import knn_impute

    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(40, 6)), rng.normal(size=(300, 6))
    q, r = q / np.linalg.norm(q, axis=1, keepdims=True), r / np.linalg.norm(r, axis=1, keepdims=True)
    vals = rng.normal(size=(300, 3))
    got = knn_impute(q, r, vals, k=7, temperature=0.1)
    s = q @ r.T
    for i in range(40):
        nn = np.argsort(-s[i])[:7]
        w = np.exp((s[i, nn] - s[i, nn].max()) / 0.1)
        np.testing.assert_allclose(got[i], (w[:, None] * vals[nn]).sum(0) / w.sum(), rtol=1e-4, atol=1e-5)
    # a query identical to one reference row with k=1 returns that row's values
    np.testing.assert_allclose(knn_impute(r[:5], r, vals, k=1, temperature=0.1), vals[:5], rtol=1e-5)


def test_celltype_match_ignores_unlabelled_cells():
    a, _ = _pair(n=60, seed=7)
    labels = np.array(["x", "y", None] * 20, dtype=object)
    assert M.celltype_match(a, a, labels) == 1.0
    assert M.celltype_match(a, a, np.array([None] * 60, dtype=object)) is None


def test_best_match_temperature_subsamples_large_inputs():
    a, b = _pair(n=400, noise=0.05, seed=8)
    assert M.best_match_temperature(a, b, max_cells=100) <= 0.05


def test_best_match_temperature_is_the_argmax_of_match_score():
    """One pass over the similarities for the whole grid picks what scoring each temperature separately picks."""
    for seed in range(3):
        a, b = _pair(n=150, seed=seed)
        scores = [M.match_score(a, b, temperature=t, top_k=40) for t in M.TEMPERATURE_GRID]
        assert M.best_match_temperature(a, b, top_k=40) == M.TEMPERATURE_GRID[int(np.argmax(scores))]


def test_celltype_match_uses_the_shared_unlabelled_rule():
    """NaN and NA-like strings are unlabelled as everywhere else (omicsclip.conventions.is_unlabelled): their
    matches are not scored, although here every one of them lands on an "x" cell."""
    a, _ = _pair(n=60, seed=7)
    b = a.copy()
    b[2::3] = a[0::3]  # each third cell's partner looks exactly like an "x" cell
    for missing in (None, float("nan"), "", "NA", "nan"):
        labels = np.array(["x", "y", missing] * 20, dtype=object)
        assert M.celltype_match(a, b, labels) == 1.0
    assert M.celltype_match(a, b, np.array(["x", "y", "z"] * 20, dtype=object)) < 1.0  # a class is scored
    assert M.celltype_match(a, a, np.array([None, "NA"] * 30, dtype=object)) is None
