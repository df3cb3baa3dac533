"""InfoNCE: chunked == plain (loss and gradients), symmetric definition, gradient checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omicsclip.model.loss import ClipLoss, row_cross_entropy, row_cross_entropy_plain


def _inputs(n: int = 70, d: int = 16, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1).requires_grad_()
    b = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1).requires_grad_()
    ls = torch.tensor(math.log(1 / 0.1), dtype=dtype, requires_grad=True)
    return a, b, ls


def _grads(loss_fn, a, b, ls):
    loss = loss_fn(a, b, ls)
    ga, gb, gs = torch.autograd.grad(loss, (a, b, ls))
    return loss.detach(), ga, gb, gs


def test_matches_textbook_definition():
    a, b, ls = _inputs(n=20)
    logits = ls.exp() * a @ b.t()
    labels = torch.arange(20)
    ref = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    assert torch.allclose(ClipLoss()(a, b, ls), ref, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 8, 33, 69])
def test_chunked_equals_plain_loss_and_grads_uneven_last_chunk(chunk):
    a, b, ls = _inputs(n=70)  # 70 is not a multiple of 8, 33 or 69: the last chunk is smaller
    ref = _grads(ClipLoss(chunk_size=0), a, b, ls)
    got = _grads(ClipLoss(chunk_size=chunk), a, b, ls)
    for r, g in zip(ref, got, strict=True):
        assert torch.allclose(r, g, atol=1e-10, rtol=1e-9)


def test_chunked_row_ce_with_offset_and_more_keys_than_queries():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(13, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(40, 8, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    ref = row_cross_entropy_plain(q, k, s, offset=20)
    got = row_cross_entropy(q, k, s, offset=20, chunk_size=4)
    assert torch.allclose(ref, got)
    for x, y in zip(torch.autograd.grad(ref, (q, k, s)), torch.autograd.grad(got, (q, k, s)), strict=True):
        assert torch.allclose(x, y, atol=1e-10)


def test_chunked_gradcheck():
    a, b, ls = _inputs(n=9, d=4)
    assert torch.autograd.gradcheck(lambda x, y, s: ClipLoss(chunk_size=4)(x, y, s), (a, b, ls))


def test_perfect_alignment_gives_low_loss_and_random_near_log_n():
    a, _, ls = _inputs(n=64, d=64)
    aligned = ClipLoss()(a, a, torch.tensor(math.log(1 / 0.05))).item()
    rnd = _inputs(n=64, d=64, seed=3)
    random_loss = ClipLoss()(rnd[0], rnd[1], torch.tensor(0.0)).item()  # T = 1: near log(64)
    assert aligned < 0.5
    assert abs(random_loss - math.log(64)) < 0.3


def test_float32_chunked_close_to_plain():
    a, b, ls = _inputs(n=257, d=32, dtype=torch.float32)
    ref = _grads(ClipLoss(), a, b, ls)
    got = _grads(ClipLoss(chunk_size=64), a, b, ls)
    for r, g in zip(ref, got, strict=True):
        assert torch.allclose(r, g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("members", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_process_symmetric_loss_equals_two_plain_directions(members, dtype):
    """The one-logit-matrix loss of a single process = the plain row cross-entropies of both directions per
    member (value and gradients of features and temperature), here at a large logit scale too."""
    from omicsclip.model.loss import symmetric_cross_entropy

    g = torch.Generator().manual_seed(members)
    for scale in (10.0, 90.0):
        a = F.normalize(torch.randn(members, 37, 8, generator=g, dtype=dtype), dim=-1).requires_grad_()
        b = F.normalize(torch.randn(members, 37, 8, generator=g, dtype=dtype), dim=-1).requires_grad_()
        s = torch.tensor(scale, dtype=dtype, requires_grad=True)
        got = _grads(symmetric_cross_entropy, a, b, s)
        plain = lambda a, b, s: sum(row_cross_entropy_plain(a[m], b[m], s) + row_cross_entropy_plain(b[m], a[m], s)  # noqa: E731
                                    for m in range(members))
        ref = _grads(plain, a, b, s)
        tol = 1e-10 if dtype == torch.float64 else 2e-4
        for x, y in zip(got, ref, strict=True):
            torch.testing.assert_close(x, y, atol=tol, rtol=tol)


def test_symmetric_gradcheck():
    from omicsclip.model.loss import symmetric_cross_entropy

    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(2, 6, 3, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(2, 6, 3, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(symmetric_cross_entropy, (a, b, s))


def test_single_process_ensemble_loss_equals_member_loop():
    """ClipLoss of one process (the symmetric path) = mean over members of the plain two-direction loss."""
    members, n, d = 3, 25, 4
    g = torch.Generator().manual_seed(1)
    blocks = [F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1) for _ in range(2 * members)]
    a = (torch.cat(blocks[:members], dim=1) / members**0.5).requires_grad_()
    b = (torch.cat(blocks[members:], dim=1) / members**0.5).requires_grad_()
    ls = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    got = _grads(ClipLoss(members=members), a, b, ls)

    def loop(a, b, ls):
        total = 0
        for m in range(members):
            qa, qb = a[:, m * d:(m + 1) * d] * members**0.5, b[:, m * d:(m + 1) * d] * members**0.5
            total = total + row_cross_entropy_plain(qa, qb, ls.exp()) + row_cross_entropy_plain(qb, qa, ls.exp())
        return total / (2 * n * members)

    for x, y in zip(got, _grads(loop, a, b, ls), strict=True):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_symmetric_loss_falls_back_to_max_shift_when_sums_underflow(dtype):
    """Every logit at -scale (exp(-2*scale) underflows): the per-row/column max shift takes over, same values."""
    from omicsclip.model.loss import symmetric_cross_entropy

    a = torch.ones(2, 9, 1, dtype=dtype, requires_grad=True)
    b = (-torch.ones(2, 9, 1, dtype=dtype)).requires_grad_()
    s = torch.tensor(90.0, dtype=dtype, requires_grad=True)
    got = _grads(symmetric_cross_entropy, a, b, s)
    ref = _grads(lambda a, b, s: sum(row_cross_entropy_plain(a[m], b[m], s) + row_cross_entropy_plain(b[m], a[m], s)
                                     for m in range(2)), a, b, s)
    tol = 1e-10 if dtype == torch.float64 else 1e-4  # float32: sums of terms near 90, gradients cancel
    for x, y in zip(got, ref, strict=True):
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)
