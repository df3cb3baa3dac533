"""open_anndata: every in-memory, backed or lazy object gives what its file gives through open_input."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from cite_files import (
    PROTEINS,
    assert_data_matches,
    make_cite,
    to_anndata,
    write_h5ad,
    write_h5ad_pair,
    write_h5mu,
)

from omicsclip.errors import InputError
from omicsclip.io.anndata_input import MatrixTable, natural_chunk_rows, open_anndata
from omicsclip.io.readers import open_input

ad = pytest.importorskip("anndata")
da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def cite():
    return make_cite(n_cells=60, n_genes=40)


@pytest.fixture(scope="module")
def h5ad(cite, tmp_path_factory):
    return write_h5ad(cite, tmp_path_factory.mktemp("h5ad") / "cells.h5ad")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _chunks(src, n):
    with src:
        return list(src.iter_chunks(n))


def assert_same(got, want):
    """Two lists of PairedData chunks are equal: cells, counts, names, obs columns."""
    assert [c.n_cells for c in got] == [c.n_cells for c in want]
    for a, b in zip(got, want, strict=True):
        assert a.barcodes == b.barcodes
        assert a.gene_names == b.gene_names
        assert a.protein_names == b.protein_names
        for x, y in ((a.rna, b.rna), (a.prot, b.prot)):
            assert (x is None) == (y is None)
            if x is not None:
                assert x.dtype == y.dtype == np.float32
                np.testing.assert_array_equal(x.toarray() if sp.issparse(x) else x,
                                              y.toarray() if sp.issparse(y) else y)
        assert list(a.obs.columns) == list(b.obs.columns)
        for col in a.obs.columns:
            assert list(a.obs[col].astype(str)) == list(b.obs[col].astype(str)), col


def _file(paths, n=16, **kw):
    return _chunks(open_input(paths, **kw), n)


# ---- one AnnData: in memory, backed, lazy -----------------------------------------------------------------------
def _memory(path, f):
    return ad.read_h5ad(path)


def _memory_csc(path, f):
    a = ad.read_h5ad(path)
    a.X = sp.csc_matrix(a.X)
    return a


def _memory_dense_int(path, f):
    a = ad.read_h5ad(path)
    a.X = a.X.toarray().astype(np.int64)
    return a


def _backed(path, f):
    return ad.read_h5ad(path, backed="r")


def _dask_sparse(path, f):
    a = ad.read_h5ad(path)
    a.X = ad.experimental.read_elem_lazy(f["X"], chunks=(9, -1))  # sparse blocks read from the file
    return a


def _dask_dense(path, f):
    a = ad.read_h5ad(path)
    a.X = da.from_array(a.X.toarray(), chunks=(11, 13))  # row and column blocks
    return a


def _lazy(path, f):
    pytest.importorskip("xarray")
    return ad.experimental.read_lazy(path)


KINDS = [_memory, _memory_csc, _memory_dense_int, _backed, _dask_sparse, _dask_dense, _lazy]


@pytest.mark.parametrize("make", KINDS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("n", [7, 60])
def test_anndata_kinds_equal_the_file(h5ad, cite, make, n):
    want = _file([h5ad], n)
    with h5py.File(h5ad, "r") as f:
        got = _chunks(open_anndata(make(h5ad, f)), n)
    assert_same(got, want)
    assert_data_matches(open_anndata(make(h5ad, None) if make is not _dask_sparse else ad.read_h5ad(h5ad)).read(),
                        cite)


def test_obsm_array_with_uns_names_and_dask_protein(cite, tmp_path):
    path = write_h5ad(cite, tmp_path / "arr.h5ad", protein="array")
    want = _file([path], 13)
    a = ad.read_h5ad(path)
    assert_same(_chunks(open_anndata(a), 13), want)
    a.obsm["protein"] = da.from_array(a.obsm["protein"], chunks=(8, -1))
    assert_same(_chunks(open_anndata(a), 13), want)


def test_mudata_in_memory_and_backed(cite, tmp_path):
    md = pytest.importorskip("mudata")
    path = write_h5mu(cite, tmp_path / "cells.h5mu", rna="gex", prot="adt")
    want = _file([path], 16, rna_modality="gex", prot_modality="adt")
    for backed in (None, "r"):
        m = md.read_h5mu(path, backed=backed)
        assert_same(_chunks(open_anndata(m, rna_modality="gex", prot_modality="adt"), 16), want)
    with pytest.raises(InputError, match="no modality 'prot' \\(has: gex, adt\\)"):
        open_anndata(md.read_h5mu(path), rna_modality="gex")


def test_pair_of_anndata_paired_by_barcode(cite, tmp_path):
    order = np.random.default_rng(3).permutation(len(cite.barcodes))
    r, p = write_h5ad_pair(cite, tmp_path / "rna.h5ad", tmp_path / "prot.h5ad", prot_order=order)
    want = _file([r, p], 16)
    assert_same(_chunks(open_anndata((ad.read_h5ad(r), ad.read_h5ad(p))), 16), want)
    assert_same(_chunks(open_anndata((ad.read_h5ad(r, backed="r"), ad.read_h5ad(p, backed="r"))), 16), want)


def test_single_modality_queries(cite, tmp_path):
    r, p = write_h5ad_pair(cite, tmp_path / "rna.h5ad", tmp_path / "prot.h5ad")
    for path, which in ((r, "rna"), (p, "prot")):
        want = _file([path], 16, require="any", modality=which)
        got = _chunks(open_anndata(ad.read_h5ad(path), require="any", modality=which), 16)
        assert_same(got, want)
        assert (got[0].rna is None) == (which == "prot")
    with pytest.raises(InputError, match="no protein counts in obsm.*both RNA and protein are needed"):
        open_anndata(ad.read_h5ad(r))


def test_layer_and_feature_types_split(cite, tmp_path):
    from cite_files import combined

    m = combined(cite)
    var = pd.DataFrame({"feature_types": ["GEX"] * len(cite.genes) + ["ADT"] * len(cite.antibodies)},
                       index=cite.genes + cite.antibodies)
    a = ad.AnnData(X=m.multiply(0.5).tocsr(), obs=pd.DataFrame(index=cite.barcodes), var=var)
    a.layers["counts"] = m
    a.write_h5ad(tmp_path / "neurips.h5ad")
    want = _file([tmp_path / "neurips.h5ad"], 16, layer="counts")
    assert_same(_chunks(open_anndata(a, layer="counts"), 16), want)
    with pytest.raises(InputError, match="no layers\\['raw'\\] \\(layers: counts"):
        open_anndata(a, layer="raw")


def test_reader_options_pass_through(cite, h5ad):
    from omicsclip.config import load_config
    from omicsclip.io.readers import reader_options

    opts = reader_options(load_config()["ingest"])
    assert_same(_chunks(open_anndata(ad.read_h5ad(h5ad), **opts), 16), _file([h5ad], 16, **opts))
    d = open_anndata(ad.read_h5ad(h5ad), keep_isotypes=True).read()
    assert d.protein_names == cite.antibodies
    assert_same(_chunks(open_anndata(h5ad), 16), _file([h5ad], 16))  # a path goes to open_input
    with pytest.raises(TypeError, match="unexpected options: fmt"):
        open_anndata(ad.read_h5ad(h5ad), fmt="h5ad")


# ---- row blocks ---------------------------------------------------------------------------------------------------
class _Counting:
    """A dense array that records the row ranges read from it."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim, self.reads = a, a.shape, a.dtype, a.ndim, []

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        if isinstance(rows, slice) and (rows.stop or 0) > (rows.start or 0):
            self.reads.append((rows.start or 0, rows.stop))
        return self.a[key]


def test_dask_read_block_by_block(cite):
    counting = _Counting(cite.rna.toarray())
    x = da.from_array(counting, chunks=(9, -1), asarray=False)
    a = to_anndata(cite)
    a.X = x
    src = open_anndata(a)
    assert natural_chunk_rows(src) == natural_chunk_rows(x) == 9
    counting.reads.clear()
    for _ in src.iter_chunks(5):  # chunks straddle the 9-row blocks: each block is still read once
        pass
    assert sorted(counting.reads) == [(lo, min(lo + 9, 60)) for lo in range(0, 60, 9)]
    counting.reads.clear()
    src.read()  # all cells at once: block by block, never the whole array in one read
    assert max(hi - lo for lo, hi in counting.reads) == 9


def test_natural_chunk_rows_and_array_kinds(cite, tmp_path):
    import zarr

    dense = cite.rna.toarray()
    z = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=dense.shape, chunks=(16, 40), dtype="f4")
    z[:] = dense
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=dense.astype(np.int32))
    assert natural_chunk_rows(z) == 16
    assert natural_chunk_rows(dense) is None
    assert natural_chunk_rows(cite.rna) is None
    with h5py.File(tmp_path / "x.h5", "r") as f:
        for x in (z, f["x"], dense, cite.rna, sp.coo_matrix(cite.rna), da.from_array(cite.rna, chunks=(7, 40))):
            t = MatrixTable(x)
            np.testing.assert_array_equal(t.read_range(5, 31).toarray(), dense[5:31])
            np.testing.assert_array_equal(t.read_rows(np.array([40, 2, 33])).toarray(), dense[[40, 2, 33]])
        assert MatrixTable(f["x"]).integer


def test_iter_store_reads_through_matrix_table(tmp_path):
    from omicsclip.io.store import iter_store, read_store, write_store
    from omicsclip.io.synthetic import make_synthetic

    path = write_store(make_synthetic(n_cells=500, n_genes=60, n_proteins=5), tmp_path / "s.zarr",
                       chunk_cells=128)
    whole = read_store(path)
    parts = list(iter_store(path, 77))
    assert [sl.start for _, _, sl in parts] == list(range(0, 500, 77))
    assert (sp.vstack([r for r, _, _ in parts]) != whole.rna).nnz == 0
    np.testing.assert_array_equal(np.vstack([p for _, p, _ in parts]), whole.prot)
    assert all(r.dtype == np.float32 and p.dtype == np.float32 for r, p, _ in parts)


# ---- errors: one line, the file readers' words ----------------------------------------------------------------------
def _message(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg.split(": ", 1)[1]


def _both_fail(a, path, **kw):
    """The object and its file fail with the same message (after the ``where:`` prefix)."""
    with pytest.raises(InputError) as got:
        open_anndata(a, **kw).read()
    a.write_h5ad(path)
    with pytest.raises(InputError) as want:
        open_input([path], **kw).read()
    assert _message(got) == _message(want)
    return str(got.value)


def test_non_integer_and_nan_counts(cite, tmp_path):
    a = to_anndata(cite)
    a.X = (a.X * 0.5).tocsr()
    assert "not integer counts" in _both_fail(a, tmp_path / "half.h5ad")
    b = to_anndata(cite)
    b.obsm["protein"].iloc[4, 1] = np.nan
    msg = _both_fail(b, tmp_path / "nan.h5ad")
    assert msg.startswith("AnnData: protein counts contain 1 NaN/inf values")
    c = to_anndata(cite)
    c.X = da.from_array((c.X * 0.5).toarray(), chunks=(10, -1))
    with pytest.raises(InputError, match="not integer counts"):
        open_anndata(c).read()


def test_missing_obsm_key_and_mismatched_pair(cite, tmp_path):
    msg = _both_fail(to_anndata(cite), tmp_path / "k.h5ad", protein_key="adt")
    assert "looked for adt; obsm has ['protein']" in msg
    r = to_anndata(cite, protein="none")
    p = ad.AnnData(X=cite.prot.copy(), obs=pd.DataFrame(index=[f"x{b}" for b in cite.barcodes[:5]]
                                                         + cite.barcodes[5:]),
                   var=pd.DataFrame(index=cite.antibodies))
    with pytest.raises(InputError) as got:
        open_anndata((r, p))
    r.write_h5ad(tmp_path / "r.h5ad")
    p.write_h5ad(tmp_path / "p.h5ad")
    with pytest.raises(InputError) as want:
        open_input([tmp_path / "r.h5ad", tmp_path / "p.h5ad"])
    named = _message(got).replace("RNA AnnData", "r.h5ad").replace("protein AnnData", "p.h5ad")
    assert named == _message(want)
    assert "barcodes differ between modalities: 5 only in RNA AnnData:X" in str(got.value)
    d = open_anndata((r, p), pairing="intersect").read()
    assert d.n_cells == len(cite.barcodes) - 5


def test_bad_objects_are_one_line_errors(cite):
    a = to_anndata(cite, protein="array")
    del a.uns["protein_names"]
    cases = [
        (lambda: open_anndata(np.zeros((3, 3))), "cannot read a ndarray: expected a MuData"),
        (lambda: open_anndata(a), "obsm\\['protein'\\] is an array without protein names"),
        (lambda: open_anndata(to_anndata(cite), require="some"), "require='some'"),
        (lambda: open_anndata(to_anndata(cite), modality="adt"), "modality='adt'"),
    ]
    b = to_anndata(cite)
    b.obsm["protein"]["CD3"] = "high"
    cases.append((lambda: open_anndata(b), "non-numeric columns \\['CD3'\\]"))
    c = to_anndata(cite)
    c.X = None
    cases.append((lambda: open_anndata(c), "X is empty"))
    for call, match in cases:
        with pytest.raises(InputError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    assert PROTEINS  # names the ground truth uses


def test_views_and_unknown_dask_chunks(cite, h5ad):
    a = ad.read_h5ad(h5ad)
    idx = np.arange(3, 50, 2)
    want = open_anndata(a[idx].copy()).read()
    assert_same([open_anndata(a[idx]).read()], [want])
    x = da.from_array(cite.rna.toarray(), chunks=(10, -1))
    b = to_anndata(cite)
    b.X = x
    with pytest.raises(InputError, match="unknown chunk sizes"):
        MatrixTable(x[x[:, 0] >= 0])


def test_store_as_mudata_and_as_lazy_pair(tmp_path):
    md = pytest.importorskip("mudata")
    import zarr

    from omicsclip.io.store import read_store, write_store
    from omicsclip.io.synthetic import make_synthetic

    path = write_store(make_synthetic(n_cells=300, n_genes=50, n_proteins=5), tmp_path / "s.zarr")
    whole = read_store(path)
    d = open_anndata(md.read_zarr(path)).read()
    assert (d.rna != whole.rna).nnz == 0
    np.testing.assert_array_equal(d.prot, whole.prot)
    assert list(d.obs["cell_type"]) == list(whole.obs["cell_type"])
    pytest.importorskip("xarray")
    g = zarr.open_group(str(path), mode="r")
    pair = (ad.experimental.read_lazy(g["mod/rna"]), ad.experimental.read_lazy(g["mod/prot"]))
    with open_anndata(pair) as src:
        assert natural_chunk_rows(src) == pair[0].X.chunks[0][0]
        d = src.read()
    assert (d.rna != whole.rna).nnz == 0
    np.testing.assert_array_equal(d.prot, whole.prot)
