"""Cheap Bernoulli draws on the CPU from 15-bit uniform integers (torch only).

``torch.rand`` on the CPU makes one Mersenne-Twister call per float32, about 3 ns a number. One int64
``random_`` draw holds 63 uniform bits (the low 63 of two 32-bit outputs), which is four independent 15-bit
numbers: about 3.4x cheaper per number. Comparing them with a threshold is a Bernoulli draw whose probability is
a multiple of ``2**-15`` (:func:`quantise`); callers round their probabilities with it first, so the draw is
exact for the probability actually used.
"""

from __future__ import annotations

import torch

BITS = 15
SCALE = 1 << BITS  # 32768: uniform integers lie in [0, SCALE)


def uniform_ints(n: int, gen: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return ``n`` independent integers uniform on ``[0, 2**15)`` (int16, 1-D).

    Parameters
    ----------
    n
        How many.
    gen
        The generator (``None``: torch's default one).
    device
        Where to draw them.
    """
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(generator=gen)
    return words.view(torch.int16)[:n].bitwise_and_(SCALE - 1)  # 4 x 16 bits a word, the top bit of each dropped


def quantise(p: torch.Tensor) -> torch.Tensor:
    """Round probabilities to the nearest multiple of ``2**-15`` (float32), the ones :func:`below` draws."""
    return torch.round(p.float().clamp(0.0, 1.0) * SCALE) / SCALE


def below(p: torch.Tensor) -> torch.Tensor:
    """Return the int16 thresholds ``t`` with ``P(uniform_ints <= t) = p`` (``p`` already :func:`quantise`'d).

    ``p = 0`` gives ``-1`` (never), ``p = 1`` gives ``2**15 - 1`` (always).
    """
    return (p * SCALE - 1.0).round_().to(torch.int16)
