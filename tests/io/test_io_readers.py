"""Every input format is read with the source counts unchanged (paired by barcode, isotypes split off)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from cite_files import (
    PROTEINS,
    assert_data_matches,
    make_cite,
    read_input,
    write_10x_h5,
    write_10x_mtx,
    write_h5ad,
    write_h5ad_pair,
    write_h5mu,
    write_tables,
)

from omicsclip.io.readers import open_input


@pytest.fixture(scope="module")
def cite():
    return make_cite()


def test_h5ad_obsm_frame(cite, tmp_path):
    d = read_input([write_h5ad(cite, tmp_path / "cells.h5ad")])
    assert_data_matches(d, cite)
    assert list(d.obs["cell_type"].astype(str)) == cite.cell_type


def test_h5ad_obsm_array_with_uns_names(cite, tmp_path):
    assert_data_matches(read_input([write_h5ad(cite, tmp_path / "cells.h5ad", protein="array")]), cite)


def test_h5ad_pair_paired_by_barcode_not_order(cite, tmp_path):
    perm = np.random.default_rng(3).permutation(len(cite.barcodes))
    paths = write_h5ad_pair(cite, tmp_path / "rna.h5ad", tmp_path / "prot.h5ad", prot_order=perm)
    with open_input(paths) as src:
        assert src.fmt == "h5ad-pair"
        assert_data_matches(src.read(), cite)
        chunks = list(src.iter_chunks(7))  # reordered rows read chunk by chunk
    np.testing.assert_array_equal(np.vstack([c.prot for c in chunks]), cite.prot_kept)


def test_h5mu_with_configurable_modality_names(cite, tmp_path):
    src = write_h5mu(cite, tmp_path / "cells.h5mu", rna="gex", prot="adt")
    assert_data_matches(read_input([src], rna_modality="gex", prot_modality="adt"), cite)


def test_10x_h5_cell_ranger_layout_with_hashtags(cite, tmp_path):
    hto = np.random.default_rng(5).poisson(3, size=(len(cite.barcodes), 2)).astype(np.float32)
    src = write_10x_h5(cite, tmp_path / "filtered_feature_bc_matrix.h5", hto=hto, hto_names=["HTO_1", "HTO_2"])
    with open_input([src]) as s:
        assert s.fmt == "10x-h5"
        chunks = list(s.iter_chunks(17))
        assert s.info["htos"] == ["HTO_1", "HTO_2"]
        assert list(s.gene_frame["gene_ids"][:2]) == ["ENSG00000", "ENSG00001"]
    assert [c.n_cells for c in chunks] == [17, 17, 17, 9]
    whole = read_input([src])
    assert_data_matches(whole, cite)
    np.testing.assert_array_equal(whole.obs["hto_HTO_2"].to_numpy(), hto[:, 1])
    assert (sp.vstack([c.rna for c in chunks]) != cite.rna).nnz == 0


def test_hashtags_recognised_by_name_among_antibodies(cite, tmp_path):
    import dataclasses

    c = dataclasses.replace(cite, antibodies=cite.antibodies[:-1] + ["HTO_3"])
    d = read_input([write_10x_h5(c, tmp_path / "m.h5")])
    assert "HTO_3" not in d.protein_names
    assert "hto_HTO_3" in d.obs
    np.testing.assert_array_equal(d.obs["hto_HTO_3"].to_numpy(), cite.prot[:, -1])


@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "unsorted"])
def test_10x_mtx_folder(cite, tmp_path, shuffle, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    folder = write_10x_mtx(cite, tmp_path / "filtered_feature_bc_matrix", shuffle=shuffle)
    with open_input([folder]) as src:
        assert src.fmt == "10x-mtx"
        assert_data_matches(src.read(), cite)
        assert len(list(scratch.iterdir())) == 1  # memory-mapped CSR while open ...
    assert list(scratch.iterdir()) == []  # ... removed on close


def test_10x_mtx_uncompressed(cite, tmp_path):
    assert_data_matches(read_input([write_10x_mtx(cite, tmp_path / "mtx", gz=False)]), cite)


@pytest.mark.parametrize(("names", "genes_in_rows"), [(("rna.csv", "adt.csv"), False),
                                                  (("rna.tsv.gz", "adt.tsv.gz"), True)])
def test_csv_tables_both_orientations(cite, tmp_path, names, genes_in_rows):
    paths = write_tables(cite, tmp_path / names[0], tmp_path / names[1], genes_in_rows=genes_in_rows)
    assert_data_matches(read_input(paths, genes_in_rows=genes_in_rows), cite)


def test_csv_streamed_in_row_blocks(cite, tmp_path, monkeypatch):
    from omicsclip.io import text

    monkeypatch.setattr(text, "_IN_MEMORY_BYTES", 0)  # force the streaming reader
    monkeypatch.setattr(text, "_BLOCK", 7)
    paths = write_tables(cite, tmp_path / "rna.csv", tmp_path / "adt.csv")
    with open_input(paths) as src:
        assert type(src._rna.table).__name__ == "StreamedRowsTable"
        chunks = list(src.iter_chunks(10))
    assert (sp.vstack([c.rna for c in chunks]) != cite.rna).nnz == 0


def test_keep_isotypes(cite, tmp_path):
    d = read_input([write_h5ad(cite, tmp_path / "cells.h5ad")], keep_isotypes=True)
    assert_data_matches(d, cite, isotypes_removed=False)


def test_format_detected_from_content_without_extension(cite, tmp_path):
    renamed = write_10x_h5(cite, tmp_path / "matrix.h5").rename(tmp_path / "matrix.bin")
    with open_input([renamed]) as s:
        assert s.fmt == "10x-h5"
        assert s.n_cells == len(cite.barcodes)


# ---- the API other stages use -------------------------------------------------------------------------------
def test_open_input_chunks_equal_read(cite, tmp_path):
    with open_input([write_h5ad(cite, tmp_path / "cells.h5ad")]) as s:
        whole = s.read()
        chunks = list(s.iter_chunks(16))
        assert s.proteins == PROTEINS
        assert s.genes == cite.genes
        assert s.n_cells == 60
    assert [c.n_cells for c in chunks] == [16, 16, 16, 12]
    assert (sp.vstack([c.rna for c in chunks]) != whole.rna).nnz == 0
    np.testing.assert_array_equal(np.vstack([c.prot for c in chunks]), whole.prot)
    assert whole.rna.dtype == np.float32
    assert whole.prot.dtype == np.float32


def test_open_input_rna_only_h5ad_when_any(cite, tmp_path):
    import anndata as ad

    a = ad.AnnData(X=cite.rna.copy())
    a.obs_names = cite.barcodes
    a.write_h5ad(tmp_path / "rna.h5ad")
    with open_input([tmp_path / "rna.h5ad"], require="any") as s:
        assert s.proteins is None
        assert s.genes == [str(g) for g in a.var_names]
        d = s.read()
    assert d.prot is None
    assert (d.rna != cite.rna).nnz == 0


def test_open_input_protein_only_table(cite, tmp_path):
    _, prot = write_tables(cite, tmp_path / "rna.csv", tmp_path / "adt.csv")
    with open_input([prot], require="any", modality="prot") as s:
        assert s.genes is None
        assert s.proteins == PROTEINS
        np.testing.assert_array_equal(s.read().prot, cite.prot_kept)


def test_open_input_protein_only_h5ad(cite, tmp_path):
    _, prot = write_h5ad_pair(cite, tmp_path / "rna.h5ad", tmp_path / "prot.h5ad")
    d = read_input([prot], require="any", modality="prot")
    assert d.rna is None
    np.testing.assert_array_equal(d.prot, cite.prot_kept)


@pytest.mark.parametrize("in_memory", [False, True])
def test_one_modality_of_a_paired_file_is_that_modality(cite, tmp_path, in_memory):
    """RNA in X and protein in obsm (the layout ingest documents): modality="prot" reads the obsm protein, not X
    (a query of the protein side of a paired file), and modality="rna" reads X without the protein."""
    import anndata as ad

    from omicsclip.io.anndata_input import open_anndata

    path = write_h5ad(cite, tmp_path / "cells.h5ad")
    src = ad.read_h5ad(path) if in_memory else path

    def opened(modality):
        return (open_anndata(src, require="any", modality=modality) if in_memory
                else open_input([src], require="any", modality=modality))

    with opened("prot") as s:
        assert s.genes is None
        assert s.proteins == PROTEINS
        np.testing.assert_array_equal(s.read().prot, cite.prot_kept)
        assert any("obsm['protein']" in n for n in s.info["notes"])
    with opened("rna") as s:
        assert s.proteins is None
        assert s.genes == list(cite.genes)
        assert (s.read().rna != cite.rna).nnz == 0


def test_one_modality_of_a_matrix_split_by_feature_types(cite, tmp_path):
    """Both modalities in X (10x feature types): modality="rna" leaves the antibody columns out of the genes
    (they would count in the library size), modality="prot" keeps only them."""
    import anndata as ad
    import pandas as pd
    from cite_files import combined

    var = pd.DataFrame({"feature_types": ["Gene Expression"] * len(cite.genes) + ["Antibody Capture"] *
                        len(cite.antibodies)}, index=cite.genes + cite.antibodies)
    ad.AnnData(X=combined(cite), obs=pd.DataFrame(index=cite.barcodes), var=var).write_h5ad(tmp_path / "10x.h5ad")
    with open_input([tmp_path / "10x.h5ad"], require="any", modality="rna") as s:
        assert s.proteins is None
        assert s.genes == list(cite.genes)
        assert (s.read().rna != cite.rna).nnz == 0
    with open_input([tmp_path / "10x.h5ad"], require="any", modality="prot") as s:
        assert s.genes is None
        assert s.proteins == PROTEINS


def test_one_modality_of_a_protein_file_is_its_x(cite, tmp_path):
    """A protein-only file with a CLR copy in obsm, or with feature types that are not all antibody (a 10x
    "Custom" column), still reads X, on its own and as the protein file of a pair; a protein_key the file lacks
    is an error."""
    import anndata as ad
    import pandas as pd

    from omicsclip.errors import InputError
    from omicsclip.model.preprocess import clr

    prot = ad.AnnData(X=cite.prot.copy(), obs=pd.DataFrame(index=cite.barcodes), var=pd.DataFrame(
        {"feature_types": ["Antibody Capture"] * (len(cite.antibodies) - 1) + ["Custom"]}, index=cite.antibodies))
    prot.obsm["protein"] = pd.DataFrame(clr(cite.prot.astype(np.float32)), index=cite.barcodes,
                                        columns=cite.antibodies)
    prot.write_h5ad(tmp_path / "adt.h5ad")
    with open_input([tmp_path / "adt.h5ad"], require="any", modality="prot", keep_isotypes=True) as s:
        assert s.proteins == list(cite.antibodies)  # the Custom column too
        np.testing.assert_array_equal(s.read().prot, cite.prot)
    rna, _ = write_h5ad_pair(cite, tmp_path / "rna.h5ad", tmp_path / "unused.h5ad")
    d = read_input([rna, tmp_path / "adt.h5ad"], fmt="h5ad-pair", keep_isotypes=True)
    np.testing.assert_array_equal(d.prot, cite.prot)
    with pytest.raises(InputError, match=r"no obsm\['adt'\] \(the protein_key given\)"):
        open_input([tmp_path / "adt.h5ad"], require="any", modality="prot", protein_key="adt")


def test_one_modality_of_unusual_feature_types_reads_x_as_before(cite, tmp_path):
    """Feature types that are not 10x's pair (here RNA / ADT): modality="rna" reads X whole, as before."""
    import anndata as ad
    import pandas as pd
    from cite_files import combined

    var = pd.DataFrame({"feature_types": ["RNA"] * len(cite.genes) + ["ADT"] * len(cite.antibodies)},
                       index=cite.genes + cite.antibodies)
    ad.AnnData(X=combined(cite), obs=pd.DataFrame(index=cite.barcodes), var=var).write_h5ad(tmp_path / "x.h5ad")
    with open_input([tmp_path / "x.h5ad"], require="any", modality="rna") as s:
        assert s.genes == list(cite.genes) + list(cite.antibodies)


def test_h5ad_counts_in_layer_with_feature_types_split(cite, tmp_path):
    """NeurIPS-2021 style: both modalities in one matrix, feature_types GEX/ADT, raw counts in layers."""
    import anndata as ad
    import pandas as pd
    from cite_files import combined

    m = combined(cite)
    var = pd.DataFrame({"feature_types": ["GEX"] * len(cite.genes) + ["ADT"] * len(cite.antibodies)},
                       index=cite.genes + cite.antibodies)
    a = ad.AnnData(X=m.multiply(0.5).tocsr(), obs=pd.DataFrame(index=cite.barcodes), var=var)
    a.layers["counts"] = m
    a.write_h5ad(tmp_path / "neurips.h5ad")
    assert_data_matches(read_input([tmp_path / "neurips.h5ad"], layer="counts"), cite)
    from omicsclip.errors import InputError

    with pytest.raises(InputError, match="no layers/raw \\(layers: counts"):
        read_input([tmp_path / "neurips.h5ad"], layer="raw")


def test_two_mtx_folders_with_geo_prefixes(cite, tmp_path):
    import dataclasses

    rna_c = dataclasses.replace(cite, prot=cite.prot[:, :0], antibodies=[])
    rna_dir = write_10x_mtx(rna_c, tmp_path / "rna")
    prot_only = dataclasses.replace(cite, rna=sp.csr_matrix((60, 0), dtype=np.float32), genes=[])
    prot_dir = write_10x_mtx(prot_only, tmp_path / "adt")
    for f in prot_dir.iterdir():  # GEO-style names: GSM123_ADT_matrix.mtx.gz
        f.rename(prot_dir / f"GSM123_ADT_{f.name}")
    with open_input([rna_dir, prot_dir]) as src:
        assert src.fmt == "10x-mtx"
        assert_data_matches(src.read(), cite)
