"""Imputation in row blocks (bounded temporaries) gives what one pass over all query cells gives."""

from __future__ import annotations

import importlib

import numpy as np

imp = importlib.import_module("omicsclip.index.impute")  # the package re-exports a function of the same name


def test_blocked_impute_matches_one_pass_with_unmeasured_proteins(monkeypatch):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(500, 7)).astype(np.float32)
    reference[rng.random(reference.shape) < 0.2] = np.nan  # pooled panels: unmeasured entries
    pos = rng.integers(0, 500, size=(103, 6))
    weights = imp.neighbour_weights(rng.uniform(0.2, 0.9, size=(103, 6)), 0.05)
    monkeypatch.setattr(imp, "_IMPUTE_BLOCK", 10**6)
    whole = imp.impute(reference, pos, weights)
    monkeypatch.setattr(imp, "_IMPUTE_BLOCK", 16)  # 103 rows: six full blocks and a short one
    blocked = imp.impute(reference, pos, weights)
    assert blocked.dtype == np.float32
    assert blocked.shape == (103, 7)
    np.testing.assert_array_equal(np.isnan(whole), np.isnan(blocked))
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=0)
    full = imp.impute(np.nan_to_num(reference), pos, weights)  # fully measured: the plain weighted mean
    np.testing.assert_allclose(full, np.einsum("nk,nkp->np", weights, np.nan_to_num(reference)[pos]), atol=1e-5)
