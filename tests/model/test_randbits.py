"""15-bit uniform integers (four per 64-bit draw) and the Bernoulli thresholds built on them."""

from __future__ import annotations

import pytest
import torch

from omicsclip.model import randbits


@pytest.mark.parametrize("n", [0, 1, 5, 4001])
def test_uniform_ints_range_shape_and_seed(n):
    a = randbits.uniform_ints(n, torch.Generator().manual_seed(3))
    b = randbits.uniform_ints(n, torch.Generator().manual_seed(3))
    assert a.dtype == torch.int16
    assert a.shape == (n,)
    assert torch.equal(a, b)
    if n:
        assert int(a.min()) >= 0
        assert int(a.max()) < randbits.SCALE


def test_uniform_ints_every_bit_is_fair_and_words_are_independent():
    """Each of the 15 bits is 1 half the time, in every one of the four positions of a 64-bit word (the top one
    holds only 15 random bits); neighbours from the same word are uncorrelated."""
    x = randbits.uniform_ints(400_000, torch.Generator().manual_seed(0)).long()
    bits = (x[:, None] >> torch.arange(15)) & 1
    for pos in range(4):
        frac = bits[pos::4].float().mean(0)
        assert torch.all((frac - 0.5).abs() < 0.006), (pos, frac)
    words = x.reshape(-1, 4).double()
    corr = torch.corrcoef(words.T)
    assert torch.all((corr - torch.eye(4)).abs() < 0.01)


@pytest.mark.parametrize("p", [0.0, 2**-15, 0.2, 0.5, 0.73, 1.0])
def test_threshold_gives_the_quantised_probability(p):
    q = randbits.quantise(torch.tensor(p))
    assert float(q) * randbits.SCALE == round(p * randbits.SCALE)
    t = randbits.below(q)
    x = randbits.uniform_ints(300_000, torch.Generator().manual_seed(1))
    got = (x <= t).float().mean().item()
    if p in (0.0, 1.0):
        assert got == p
    else:
        assert abs(got - float(q)) < 5 * (float(q) * (1 - float(q)) / x.numel()) ** 0.5 + 1e-6
