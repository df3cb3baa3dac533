from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from omicsclip.errors import InputError
from omicsclip.io.synthetic import make_synthetic, write_synthetic_h5ad


def test_reproducible_and_realistic():
    a = make_synthetic(1500, 400, 12, n_types=5, n_batches=2, n_isotypes=2, seed=7)
    b = make_synthetic(1500, 400, 12, n_types=5, n_batches=2, n_isotypes=2, seed=7)
    c = make_synthetic(1500, 400, 12, n_types=5, n_batches=2, n_isotypes=2, seed=8)
    assert (a.rna != b.rna).nnz == 0
    assert np.array_equal(a.prot, b.prot)
    assert (a.rna != c.rna).nnz > 0
    # raw integer counts, sparse like droplet data, library sizes vary between cells
    assert np.all(a.rna.data == np.round(a.rna.data))
    assert a.rna.data.min() > 0
    density = a.rna.nnz / np.prod(a.rna.shape)
    assert 0.05 < density < 0.75
    lib = np.asarray(a.rna.sum(axis=1)).ravel()
    assert lib.std() / lib.mean() > 0.3
    assert a.obs["cell_type"].nunique() == 5
    assert a.obs["batch"].nunique() == 2
    assert a.obs.index.is_unique
    # isotypes: ambient only, far below the specific antibodies
    iso = a.proteins["isotype_control"].to_numpy()
    assert iso.sum() == 2
    assert a.prot[:, iso].mean() < 0.2 * a.prot[:, ~iso].mean()


def test_protein_tracks_cell_type_and_linked_gene():
    d = make_synthetic(3000, 300, 10, n_types=4, seed=1)
    clr = np.log1p(d.prot) - np.log1p(d.prot).mean(axis=1, keepdims=True)
    types = d.obs["cell_type"].cat.codes.to_numpy()
    # between-type variance of protein is substantial
    means = np.stack([clr[types == k].mean(0) for k in range(4)])
    assert means.std(axis=0).max() > 0.5
    # protein 0 is linked to gene 0: their per-cell levels correlate
    g0 = np.log1p(np.asarray(d.rna[:, 0].todense()).ravel() / np.asarray(d.rna.sum(1)).ravel() * 1e4)
    assert np.corrcoef(g0, clr[:, 0])[0, 1] > 0.2


def test_streamed_h5ad_equals_in_memory(tmp_path):
    out = write_synthetic_h5ad(tmp_path / "s.h5ad", 2500, 200, 8, n_types=3, n_isotypes=1, seed=2)
    mem = make_synthetic(2500, 200, 8, n_types=3, n_isotypes=1, seed=2)
    a = ad.read_h5ad(out)
    assert (a.X != mem.rna).nnz == 0
    np.testing.assert_array_equal(a.obsm["protein"].to_numpy(), mem.prot)
    assert list(a.obsm["protein"].columns) == list(mem.proteins.index)
    assert list(a.obs_names) == list(mem.obs.index)
    with pytest.raises(InputError, match="already exists"):
        write_synthetic_h5ad(out, 10, 20, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5ad"]


def test_bad_sizes():
    with pytest.raises(InputError, match="cells"):
        make_synthetic(0)
    with pytest.raises(InputError, match="cannot exceed"):
        make_synthetic(10, n_genes=5, n_proteins=10)
