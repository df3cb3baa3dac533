"""preprocess.pca_within_datasets: a pooled store's principal axes describe the variation within its datasets, not
the offset between them."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from omicsclip.config import default_config
from omicsclip.model.preprocess import _centre_groups, fit_preprocessing, log_normalize

PRE = {k: v for k, v in default_config()["preprocess"].items() if k not in ("genes", "pca_within_datasets")}


def test_centre_groups_centres_each_groups_measured_values_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32) + np.arange(6, dtype=np.float32)
    groups = np.repeat([0, 1], 20)
    table = np.ones((2, 6), bool)
    table[1, 4:] = False  # group 1 did not measure the last two columns: they hold 0 (the mean)
    measured = table[groups]
    x[~measured] = 0.0
    before = x.copy()
    _centre_groups(x, groups, table, chunk=7)  # chunks that do not divide the groups
    for g in (0, 1):
        rows = groups == g
        cols = measured[rows].all(axis=0)
        assert np.abs(x[rows][:, cols].mean(axis=0)).max() < 1e-5
        np.testing.assert_allclose(x[rows] - before[rows], np.where(measured[rows], x[rows] - before[rows], 0))
    assert (x[~measured] == 0).all()
    y = before.copy()
    y[~measured] = 0
    _centre_groups(y, groups, None)  # no mask: every column of every group centred
    assert np.abs(y[:20].mean(axis=0)).max() < 1e-5
    assert np.abs(y[20:].mean(axis=0)).max() < 1e-5


def two_labs(n=300, genes=40, shift=8.0, seed=0):
    """Two labs of the same cells' kind; lab B's first 10 genes read ``shift`` times higher (a batch effect)."""
    rng = np.random.default_rng(seed)
    program = rng.normal(size=(2 * n, 3))  # three biological programmes shared by both labs
    load = rng.gamma(2.0, 0.5, size=(3, genes))
    rate = np.exp(0.4 * program @ load / np.sqrt(3)) * 2.0
    rate[n:, :10] *= shift
    rna = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    prot = rng.poisson(20 * np.exp(program[:, :2])).astype(np.float32)
    return rna, prot, np.repeat([0, 1], n), program


@pytest.mark.parametrize("within", [False, True])
def test_axes_within_datasets_are_not_spent_on_the_lab_offset(within):
    rna, prot, labs, program = two_labs()
    kw = {**PRE, "n_hvg": 0, "n_pcs": 2, "protein_genes": 0, "depth_features": False}
    state = fit_preprocessing(rna, prot, [f"g{i}" for i in range(rna.shape[1])], ["p0", "p1"], **kw,
                              dataset_codes=labs, pca_within_datasets=within)
    x = log_normalize(rna, kw["target_sum"]).toarray()
    x = np.clip((x - state.rna_mean) / state.rna_std, -kw["max_value"], kw["max_value"])
    first = x @ state.rna_pcs[0]
    offset = abs(np.corrcoef(first, labs)[0, 1])  # how much of the first axis tells the labs apart
    if within:
        assert offset < 0.3
    else:
        assert offset > 0.8  # without it the first axis is the batch effect
    # whichever it is, the fit's other outputs do not depend on the option
    plain = fit_preprocessing(rna, prot, [f"g{i}" for i in range(rna.shape[1])], ["p0", "p1"], **kw,
                              pca_within_datasets=False)  # a single dataset (no dataset codes)
    np.testing.assert_array_equal(state.rna_mean, plain.rna_mean)
    np.testing.assert_array_equal(state.rna_std, plain.rna_std)
    if not within:
        np.testing.assert_array_equal(state.rna_pcs, plain.rna_pcs)


def test_training_on_a_pooled_store_fits_the_axes_within_its_datasets(tmp_path):
    """End to end: train reads each training cell's dataset from the pooled store; single stores are unaffected."""
    from conftest import TINY

    from omicsclip.config import load_config
    from omicsclip.io.pool import pool_stores
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.modelio import load_model
    from omicsclip.train.run import train_model

    d = make_synthetic(n_cells=400, n_genes=60, n_proteins=6, n_types=3, seed=2)
    a, b = d.subset(np.arange(200)), d.subset(np.arange(200, 400))
    b.rna, b.genes = b.rna[:, 5:], b.genes.iloc[5:]  # lab B measured fewer genes (a union-gene pool)
    pooled = pool_stores([write_store(a, tmp_path / "a.zarr"), write_store(b, tmp_path / "b.zarr")],
                         tmp_path / "pooled.zarr")
    states = {}
    for within in (False, True):
        for name, store in (("pooled", pooled), ("single", tmp_path / "a.zarr")):
            cfg = load_config(None, [*TINY, "train.epochs=1", "preprocess.n_pcs=5", "preprocess.protein_genes=0",
                                     f"preprocess.pca_within_datasets={str(within).lower()}"])
            out = train_model(store, tmp_path / f"m_{name}_{within}", cfg)
            states[name, within] = load_model(out).state
    assert not np.allclose(states["pooled", True].rna_pcs, states["pooled", False].rna_pcs, atol=1e-3)
    np.testing.assert_array_equal(states["single", True].rna_pcs, states["single", False].rna_pcs)


def test_dataset_codes_follow_the_panel_order_and_refuse_a_store_without_datasets():
    import pandas as pd

    from omicsclip.errors import InputError
    from omicsclip.io.panels import dataset_codes

    panels = {"b": ["P1"], "a": ["P1", "P2"]}
    obs = pd.DataFrame({"dataset": ["b", "a", "b"]})
    np.testing.assert_array_equal(dataset_codes(obs, panels), [1, 0, 1])  # rows of sorted(panels)
    with pytest.raises(InputError, match="no obs column 'dataset'"):
        dataset_codes(pd.DataFrame(index=range(3)), panels)
    with pytest.raises(InputError, match="have no protein panel"):
        dataset_codes(pd.DataFrame({"dataset": ["c"]}), panels)
