"""Optimised batch operations against their plain references: thinning, row gathers, the sparse projection."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

from omicsclip.model.batchops import (
    EXPAND_MAX,
    Augmentation,
    CountTransform,
    RawBatch,
    gather_rows,
    thin_batch,
    thin_counts,
    thin_counts_reference,
    transform_batch,
)


def _chi2_pvalue(draws: np.ndarray, n: int, q: float) -> float:
    """Chi-square goodness of fit of integer draws to Binomial(n, q), bins with expected counts < 5 pooled."""
    pmf = stats.binom.pmf(np.arange(n + 1), n, q) * draws.size
    obs = np.bincount(draws.astype(np.int64), minlength=n + 1).astype(float)
    exp_bins, obs_bins, e_acc, o_acc = [], [], 0.0, 0.0
    for e, o in zip(pmf, obs, strict=True):
        e_acc, o_acc = e_acc + e, o_acc + o
        if e_acc >= 5:
            exp_bins.append(e_acc)
            obs_bins.append(o_acc)
            e_acc = o_acc = 0.0
    exp_bins[-1] += e_acc
    obs_bins[-1] += o_acc
    if len(exp_bins) < 2:
        return 1.0
    return float(stats.chisquare(obs_bins, np.array(exp_bins) * sum(obs_bins) / sum(exp_bins)).pvalue)


@pytest.mark.parametrize("n", [1, 2, 3, 7, EXPAND_MAX, EXPAND_MAX + 1, 60, 1000])
@pytest.mark.parametrize("q", [0.05, 0.5, 0.83])
def test_thinning_is_binomial(n, q):
    """Each count c becomes Binomial(c, q): chi-square fit of 20,000 draws, on both sides of EXPAND_MAX."""
    g = torch.Generator().manual_seed(n * 1000 + int(q * 100))
    counts = torch.full((20_000,), float(n))
    draws = thin_counts(counts, torch.tensor(q), g).numpy()
    assert np.all(draws == np.round(draws))
    assert draws.min() >= 0
    assert draws.max() <= n
    assert _chi2_pvalue(draws, n, q) > 1e-3
    ref = thin_counts_reference(counts, torch.tensor(q), g).numpy()
    assert abs(draws.mean() - ref.mean()) < 5 * np.sqrt(2 * n * q * (1 - q) / draws.size) + 1e-9


def test_thinning_per_entry_probabilities_mixed_counts_and_shapes():
    """Mixed counts (zeros, small, large) with per-row probabilities broadcast over a matrix: the right moments
    entry by entry, integer results, shape kept; non-integer counts go through torch.binomial unchanged."""
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([0.0, 1.0, 4.0, 16.0, 17.0, 250.0])
    counts = base.repeat(4000, 1)  # 4000 x 6
    q = torch.linspace(0.1, 0.9, 4000)[:, None]
    out = thin_counts(counts, q, g)
    assert out.shape == counts.shape
    assert torch.all(out <= counts)
    assert torch.all(out == out.round())
    assert torch.all(out[:, 0] == 0)
    expected = (counts * q).sum(0)
    sd = (counts * q * (1 - q)).sum(0).sqrt()
    assert torch.all((out.sum(0) - expected).abs() <= 5 * sd + 1e-6)
    frac = torch.tensor([[2.5, 0.5]])
    got = thin_counts(frac, torch.tensor(0.5), torch.Generator().manual_seed(3))
    ref = thin_counts_reference(frac, torch.tensor(0.5), torch.Generator().manual_seed(3))
    assert torch.equal(got, ref)  # non-integer counts: the reference path, same stream


@pytest.mark.parametrize("n", [1, 5, EXPAND_MAX, EXPAND_MAX + 1, 300])
def test_thinning_with_rows_is_binomial_per_row(n):
    """``rows``: one keep probability per (sorted) row; each row's counts are Binomial(c, q_row), rows of
    different sizes, an empty row among them, small and large counts mixed within a row."""
    g = torch.Generator().manual_seed(n)
    q = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.77])
    sizes = torch.tensor([6000, 0, 9000, 5000, 7000])
    rows = torch.repeat_interleave(torch.arange(5), sizes)
    counts = torch.full((int(sizes.sum()),), float(n))
    counts[::5] = 3.0  # a second count value inside every row
    draws = thin_counts(counts, q, g, rows=rows)
    assert torch.all(draws == draws.round())
    assert torch.all((draws >= 0) & (draws <= counts))
    for r in (0, 2, 3, 4):
        in_row = rows == r
        for value in (float(n), 3.0):
            sel = draws[in_row & (counts == value)].numpy()
            assert _chi2_pvalue(sel, int(value), float(q[r])) > 1e-3, (r, value)
    assert torch.equal(thin_counts(counts, torch.ones(5), g, rows=rows), counts)
    assert thin_counts(torch.zeros(0), q, g, rows=torch.zeros(0, dtype=torch.int64)).numel() == 0


def test_thinning_rows_must_be_sorted_and_match():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="sorted"):
        thin_counts(torch.ones(3), torch.full((2,), 0.5), g, rows=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="one row index per count"):
        thin_counts(torch.ones(3), torch.full((2,), 0.5), g, rows=torch.tensor([0, 1]))


def test_thinning_keeps_everything_at_one_and_is_seeded():
    c = torch.tensor([0.0, 1.0, 3.0, 40.0, 700.0])
    assert torch.equal(thin_counts(c, torch.tensor(1.0), torch.Generator().manual_seed(0)), c)
    a = thin_counts(c, torch.tensor(0.4), torch.Generator().manual_seed(5))
    b = thin_counts(c, torch.tensor(0.4), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert thin_counts(torch.zeros(0), torch.tensor(0.5), torch.Generator()).numel() == 0


def _csr(n=50, g=40, seed=0):
    rng = np.random.default_rng(seed)
    m = sp.random(n, g, density=0.3, random_state=seed, format="csr",
                  data_rvs=lambda k: rng.integers(1, 30, k).astype(np.float32))
    m.data[::7] = 200.0  # some counts above EXPAND_MAX
    return m


def _plain_gather(m: sp.csr_matrix, other: np.ndarray, prot: np.ndarray, idx: np.ndarray) -> RawBatch:
    sub = m[idx].tocoo()
    order = np.lexsort((sub.col, sub.row))
    return RawBatch(n=len(idx), row=torch.as_tensor(sub.row[order], dtype=torch.int64),
                    col=torch.as_tensor(sub.col[order], dtype=torch.int64),
                    val=torch.as_tensor(sub.data[order]), other=torch.as_tensor(other[idx]),
                    prot=torch.as_tensor(prot[idx]))


def test_gather_rows_equals_scipy_row_selection():
    m = _csr()
    m.sort_indices()
    other = np.arange(50, dtype=np.float32)
    prot = np.random.default_rng(1).random((50, 3)).astype(np.float32)
    idx = np.array([7, 0, 49, 3, 3, 12])
    got = gather_rows(torch.as_tensor(m.indptr.astype(np.int64)), torch.as_tensor(m.indices.astype(np.int32)),
                      torch.as_tensor(m.data), torch.as_tensor(other), torch.as_tensor(prot), torch.as_tensor(idx))
    ref = _plain_gather(m, other, prot, idx)
    assert got.n == ref.n
    for key in ("row", "col", "val", "other", "prot"):
        assert torch.equal(getattr(got, key), getattr(ref, key)), key
    empty = gather_rows(torch.as_tensor(m.indptr.astype(np.int64)), torch.as_tensor(m.indices.astype(np.int32)),
                        torch.as_tensor(m.data), torch.as_tensor(other), torch.as_tensor(prot),
                        torch.zeros(0, dtype=torch.int64))
    assert empty.n == 0
    assert empty.row.numel() == 0


def _transform(g: int, proj: torch.Tensor, *, scaled: bool = True) -> CountTransform:
    rng = np.random.default_rng(2)
    mean = torch.as_tensor(rng.random(g).astype(np.float32)) if scaled else None
    std = torch.as_tensor(0.2 + rng.random(g).astype(np.float32)) if scaled else None
    return CountTransform(n_genes=g, target_sum=1e4, max_value=2.0, rna_mean=mean, rna_std=std, rna_proj=proj,
                          n_proteins=3, depth=(7.0, 0.5, 8.0, 0.6))


def _projection(g: int, pcs: int, genes: list[int], *, shuffle: bool = False) -> torch.Tensor:
    rng = np.random.default_rng(3)
    rows = np.zeros((len(genes), g), np.float32)
    rows[np.arange(len(genes)), genes] = 1.0
    proj = np.concatenate([rng.normal(size=(pcs, g)).astype(np.float32), rows])
    if shuffle:
        proj = proj[rng.permutation(len(proj))]
    return torch.as_tensor(proj)


@pytest.mark.parametrize("case", ["pcs_and_indicators", "shuffled_rows", "duplicate_indicator", "only_indicators",
                                  "only_pcs", "unscaled"])
def test_sparse_projection_equals_dense_reference(case):
    """From the non-zeros (sparse product for dense rows, scatter for indicator rows) = dense cells x genes,
    clipping included (max_value=2 clips both non-zero entries and the zeros' scaled value)."""
    g = 40
    genes = {"duplicate_indicator": [3, 5, 3], "only_pcs": []}.get(case, [3, 5, 11, 39])
    proj = _projection(g, 0 if case == "only_indicators" else 6, genes, shuffle=case == "shuffled_rows")
    tf = _transform(g, proj, scaled=case != "unscaled")
    m = _csr(n=30, g=g)
    m.sort_indices()
    batch = _plain_gather(m, np.full(30, 5.0, np.float32), np.ones((30, 3), np.float32), np.arange(30))
    val, other, prot = thin_batch(batch, None, None)
    got, _ = transform_batch(batch, val, other, prot, tf)
    ref, _ = transform_batch(batch, val, other, prot, tf, reference=True)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    if case == "pcs_and_indicators":  # indicator columns are the scaled values themselves (to rounding)
        dense = torch.zeros(30, g)
        dense[batch.row, batch.col] = val
        lib = val.new_zeros(30).index_add_(0, batch.row, val) + other
        torch.testing.assert_close(got[:, 6:10], tf.rna_genes(dense, lib)[:, genes], atol=1e-6, rtol=1e-6)
    present = torch.ones(g)
    present[[5, 20]] = 0
    got_p = tf.rna_sparse(batch.row, batch.col, val, val.new_zeros(30).index_add_(0, batch.row, val) + other, 30,
                          present)
    ref_p = tf.rna(torch.zeros(30, g).index_put_((batch.row, batch.col), val),
                   val.new_zeros(30).index_add_(0, batch.row, val) + other, present)
    torch.testing.assert_close(got_p, ref_p, atol=1e-4, rtol=1e-4)


def test_feature_dropout_and_thinning_paths_agree_with_reference_transform():
    """With feature dropout (and the gene-wise shift) the sparse and dense transforms see the same draws."""
    g = 40
    tf = _transform(g, _projection(g, 5, [1, 2]))
    m = _csr(n=20, g=g)
    m.sort_indices()
    batch = _plain_gather(m, np.zeros(20, np.float32), np.ones((20, 3), np.float32), np.arange(20))
    aug = Augmentation(thinning=0.5, feature_dropout=0.3, prot_feature_dropout=0.2, gene_shift=0.5)
    val, other, prot = thin_batch(batch, aug, torch.Generator().manual_seed(0))
    got = transform_batch(batch, val, other, prot, tf, aug, torch.Generator().manual_seed(1))
    ref = transform_batch(batch, val, other, prot, tf, aug, torch.Generator().manual_seed(1), reference=True)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(got[1], ref[1])


def test_projection_plan_follows_a_replaced_projection():
    g = 40
    tf = _transform(g, _projection(g, 4, [7]))
    m = _csr(n=10, g=g)
    m.sort_indices()
    batch = _plain_gather(m, np.zeros(10, np.float32), np.ones((10, 3), np.float32), np.arange(10))
    val, other, prot = thin_batch(batch, None, None)
    transform_batch(batch, val, other, prot, tf)
    tf.rna_proj = _projection(g, 2, [8, 9])
    got, _ = transform_batch(batch, val, other, prot, tf)
    ref, _ = transform_batch(batch, val, other, prot, tf, reference=True)
    assert got.shape == (10, 5)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
