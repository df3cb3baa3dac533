"""Bad inputs: one clear line naming the file and the problem, InputError (exit 2), nothing left behind."""

from __future__ import annotations

import dataclasses
import gzip

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from cite_files import (
    make_cite,
    stray_files,
    write_10x_h5,
    write_10x_mtx,
    write_h5ad,
    write_h5ad_pair,
    write_tables,
)

from omicsclip.errors import InputError
from omicsclip.io.ingest import ingest


@pytest.fixture(scope="module")
def cite():
    return make_cite()


def _fails(tmp_path, inputs, match, **kw):
    """ingest must raise one-line InputError matching ``match`` and leave nothing in tmp_path/out."""
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(InputError, match=match) as err:
        ingest(inputs, out_dir / "s.zarr", **kw)
    msg = str(err.value)
    assert "\n" not in msg
    assert err.value.exit_code == 2
    assert list(out_dir.iterdir()) == []
    return msg


def _with_rna(c, rna: np.ndarray):
    return dataclasses.replace(c, rna=sp.csr_matrix(rna.astype(np.float32)))


@pytest.mark.parametrize(("value", "match"), [(np.nan, "NaN/inf"), (np.inf, "NaN/inf"), (-2, "negative"),
                                         (0.5, "not integer counts.*--allow-normalized")])
def test_bad_values_are_refused_mid_stream(cite, tmp_path, value, match):
    dense = cite.rna.toarray()
    dense[45, 7] = value  # in the third chunk: the partial store must be removed
    src = write_h5ad(_with_rna(cite, dense), tmp_path / "bad.h5ad")
    msg = _fails(tmp_path, [src], match, chunk_cells=20)
    assert str(src) in msg
    assert cite.barcodes[45] in msg
    assert "GENE7" in msg


def test_allow_normalized_accepts_and_records(cite, tmp_path):
    from omicsclip.io.store import store_info

    src = write_h5ad(_with_rna(cite, cite.rna.toarray() * 0.37), tmp_path / "norm.h5ad")
    out = ingest([src], tmp_path / "s.zarr", allow_normalized=True)
    prov = store_info(out)["uns"]["provenance"]
    assert bool(prov["allow_normalized"]) is True
    assert bool(prov["integer_counts"]) is False


def test_duplicate_barcodes(cite, tmp_path):
    c = dataclasses.replace(cite, barcodes=cite.barcodes[:-1] + cite.barcodes[:1])
    rna, prot = write_tables(c, tmp_path / "r.csv", tmp_path / "p.csv")
    _fails(tmp_path, [rna, prot], "1 duplicate cell barcodes")


def test_duplicate_feature_names_error_or_make_unique(cite, tmp_path):
    c = dataclasses.replace(cite, genes=cite.genes[:-1] + ["GENE0"])
    src = write_10x_h5(c, tmp_path / "dup.h5")
    _fails(tmp_path, [src], "1 duplicate gene names.*--make-unique")
    from omicsclip.io.readers import open_input

    with open_input([src], make_unique=True) as s:
        assert s.genes[-1] == "GENE0-1"
        assert len(set(s.genes)) == len(s.genes)


def test_empty_matrix(cite, tmp_path):
    import anndata as ad

    a = ad.AnnData(X=sp.csr_matrix((0, 5), dtype=np.float32))
    a.obsm["protein"] = np.zeros((0, 2), np.float32)
    a.uns["protein_names"] = np.array(["CD3", "CD4"], dtype=object)
    a.write_h5ad(tmp_path / "empty.h5ad")
    _fails(tmp_path, [tmp_path / "empty.h5ad"], "no cells \\(empty matrix\\)")


def test_all_zero_protein(cite, tmp_path):
    c = dataclasses.replace(cite, prot=np.zeros_like(cite.prot))
    _fails(tmp_path, [write_h5ad(c, tmp_path / "z.h5ad")], "all protein counts are zero")


def test_shape_mismatch_10x(cite, tmp_path):
    src = write_10x_h5(cite, tmp_path / "bad.h5", shape=(10, 60))
    _fails(tmp_path, [src], "shape mismatch")


def test_shape_mismatch_mtx(cite, tmp_path):
    folder = write_10x_mtx(cite, tmp_path / "mtx")
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("".join(f"{b}\n" for b in cite.barcodes[:-3]))
    _fails(tmp_path, [folder], "shape mismatch")


def test_truncated_h5(cite, tmp_path):
    src = write_10x_h5(cite, tmp_path / "trunc.h5")
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    _fails(tmp_path, [src], "truncated or corrupt")


def test_truncated_mtx_gz(cite, tmp_path):
    folder = write_10x_mtx(cite, tmp_path / "mtx")
    raw = (folder / "matrix.mtx.gz").read_bytes()
    (folder / "matrix.mtx.gz").write_bytes(raw[: len(raw) * 2 // 3])
    _fails(tmp_path, [folder], "truncated or corrupt")


def test_corrupt_csv_gz_and_non_numeric(cite, tmp_path):
    bad = tmp_path / "r.csv.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    _, prot = write_tables(cite, tmp_path / "x.csv", tmp_path / "p.csv")
    _fails(tmp_path, [bad, prot], "corrupt gzip")
    txt = tmp_path / "r.csv"
    txt.write_text("barcode,G1,G2\nAAA,1,x\nCCC,2,3\n")
    _fails(tmp_path, [txt, prot], "non-numeric value")


def test_not_what_the_format_claims(cite, tmp_path):
    fake = tmp_path / "cells.h5ad"
    fake.write_text("barcode,CD3\nAAA,1\n")
    _fails(tmp_path, [fake], "not an HDF5 file")
    h5ad = write_h5ad(cite, tmp_path / "real.h5ad")
    _fails(tmp_path, [h5ad], "no matrix/ group", fmt="10x-h5")
    tenx = write_10x_h5(cite, tmp_path / "m.h5")
    _fails(tmp_path, [tenx], "not an AnnData file", fmt="h5ad")
    _fails(tmp_path, [h5ad], "not a text table", fmt="csv")


def test_unknown_format_name(cite, tmp_path):
    _fails(tmp_path, [write_h5ad(cite, tmp_path / "c.h5ad")], "--format 'loom'", fmt="loom")


def test_missing_protein(cite, tmp_path):
    import anndata as ad

    ad.AnnData(X=cite.rna.copy()).write_h5ad(tmp_path / "rna.h5ad")
    _fails(tmp_path, [tmp_path / "rna.h5ad"], "no protein counts in obsm.*both RNA and protein")


def test_missing_h5mu_modality_names_the_options(cite, tmp_path):
    from cite_files import write_h5mu

    src = write_h5mu(cite, tmp_path / "c.h5mu", prot="adt")
    _fails(tmp_path, [src], "no modality 'prot' \\(has: adt, rna\\).*ingest.prot_modality")


def test_strict_pairing_error_and_intersect(cite, tmp_path, caplog):
    rna, prot = write_h5ad_pair(cite, tmp_path / "r.h5ad", tmp_path / "p.h5ad",
                                prot_order=np.arange(5, len(cite.barcodes)))
    msg = _fails(tmp_path, [rna, prot], "5 only in r.h5ad.*--pairing intersect to keep the 55 shared cells")
    assert cite.barcodes[0] in msg
    from omicsclip.io.store import read_store

    out = ingest([rna, prot], tmp_path / "s.zarr", pairing="intersect")
    d = read_store(out)
    assert d.barcodes == cite.barcodes[5:]
    np.testing.assert_array_equal(d.prot, cite.prot_kept[5:])
    assert int(d.uns["qc"]["n_cells_unpaired_rna"]) == 5
    assert "keeping 55 shared cells" in caplog.text


def test_refuses_to_overwrite(cite, tmp_path):
    src = write_h5ad(cite, tmp_path / "c.h5ad")
    out = tmp_path / "out" / "s.zarr"
    out.mkdir(parents=True)
    (out / "keep").write_text("x")
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        ingest([src], out)
    assert (out / "keep").exists()


def test_output_directory_must_exist(cite, tmp_path):
    with pytest.raises(InputError, match="output directory does not exist"):
        ingest([write_h5ad(cite, tmp_path / "c.h5ad")], tmp_path / "nope" / "s.zarr")


def test_min_counts_dropping_everything(cite, tmp_path):
    _fails(tmp_path, [write_h5ad(cite, tmp_path / "c.h5ad")], "no cells left after QC", min_counts_rna=1e9)


def test_bad_isotype_regex(cite, tmp_path):
    _fails(tmp_path, [write_h5ad(cite, tmp_path / "c.h5ad")], "invalid regular expression",
           isotype_patterns=["(unclosed"])


def test_no_stray_files_after_failure(cite, tmp_path):
    dense = cite.rna.toarray()
    dense[-1, -1] = -1
    src = write_h5ad(_with_rna(cite, dense), tmp_path / "bad.h5ad")
    with pytest.raises(InputError):
        ingest([src], tmp_path / "s.zarr", chunk_cells=10)
    assert stray_files(tmp_path) == []
    assert not (tmp_path / "s.zarr").exists()


def test_corrupt_10x_indices(cite, tmp_path):
    src = write_10x_h5(cite, tmp_path / "c.h5")
    with h5py.File(src, "r+") as f:
        f["matrix/indices"][3] = 10_000
    _fails(tmp_path, [src], "feature indices outside")


def test_duplicate_names_in_table_headers_are_reported_not_renamed(tmp_path, cite):
    c = dataclasses.replace(cite, genes=[cite.genes[0], *cite.genes[1:-1], cite.genes[0]])
    rna, prot = write_tables(c, tmp_path / "rna.csv", tmp_path / "prot.csv")
    _fails(tmp_path, [rna, prot], "duplicate gene names")
    rna, prot = write_tables(dataclasses.replace(cite, barcodes=[cite.barcodes[1], *cite.barcodes[1:]]),
                             tmp_path / "rg.csv", tmp_path / "pg.csv", genes_in_rows=True)
    _fails(tmp_path, [rna, prot], "duplicate cell barcodes", genes_in_rows=True)


def test_overwrite_never_deletes_an_input_or_the_working_directory(tmp_path, cite, monkeypatch):
    src = tmp_path / "data" / "sub"
    src.mkdir(parents=True)
    rna, prot = write_tables(cite, src / "rna.csv", src / "prot.csv")
    (tmp_path / "data" / "keep.txt").write_text("user file")
    with pytest.raises(InputError, match="would delete the input"):
        ingest([rna, prot], tmp_path / "data", overwrite=True)
    monkeypatch.chdir(src)
    with pytest.raises(InputError, match="would delete the working directory"):
        ingest([rna, prot], tmp_path / "data", overwrite=True)
    assert (tmp_path / "data" / "keep.txt").exists()
    assert rna.exists()


def test_damaged_store_is_a_one_line_error(tmp_path, cite):
    import shutil

    from omicsclip.io.store import read_store, store_info

    rna, prot = write_tables(cite, tmp_path / "rna.csv", tmp_path / "prot.csv")
    store = ingest([rna, prot], tmp_path / "s.zarr")
    shutil.rmtree(store / "mod" / "prot" / "var")
    for fn in (store_info, read_store):
        with pytest.raises(InputError, match="corrupt store"):
            fn(store)


def test_output_path_checks_are_one_line_errors_and_symlinks_are_not_followed(tmp_path, cite):
    from omicsclip.io.atomic import atomic_path

    src = write_h5ad(cite, tmp_path / "c.h5ad")
    with pytest.raises(InputError, match="output directory does not exist"):  # parent is a file
        ingest([src], src / "s.zarr")
    target = tmp_path / "target.txt"
    target.write_text("the user's file")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with atomic_path(link, overwrite=True) as tmp:
        tmp.write_text("new output")
    assert target.read_text() == "the user's file"  # the link was replaced, not the file it pointed to
    assert not link.is_symlink()
    assert link.read_text() == "new output"
