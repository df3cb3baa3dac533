"""Pooled stores (several datasets, different antibody panels and gene sets) and shared gene sets."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from omicsclip.errors import InputError
from omicsclip.io.genesets import read_gene_list, resolve_genes
from omicsclip.io.panels import (
    DATASET_COLUMN,
    GENE_PANELS_KEY,
    column_names,
    dataset_groups,
    gene_masks,
    panels_of,
    protein_present,
    store_gene_masks,
    store_present,
    store_protein_masks,
)
from omicsclip.io.pool import dataset_names, pool_stores
from omicsclip.io.store import iter_store, read_store, store_info, write_store
from omicsclip.io.synthetic import make_synthetic


def two_labs(tmp_path, n=240):
    """Two stores of one synthetic population: lab A has proteins 0-13 and all genes, lab B proteins 6-19 and
    genes 10 onwards, with a barcode in common."""
    d = make_synthetic(n_cells=2 * n, n_genes=80, n_proteins=20, n_types=4, seed=3)
    a, b = d.subset(np.arange(n)), d.subset(np.arange(n, 2 * n))
    a.prot, a.proteins = a.prot[:, :14], a.proteins.iloc[:14]
    b.prot, b.proteins = b.prot[:, 6:], b.proteins.iloc[6:]
    b.rna, b.genes = b.rna[:, 10:], b.genes.iloc[10:]
    b.obs = b.obs.rename(index={b.obs.index[0]: a.obs.index[0]})  # the same barcode in both labs
    b.obs = b.obs.drop(columns=["cell_type"])  # an unlabelled lab
    return write_store(a, tmp_path / "labA.zarr"), write_store(b, tmp_path / "labB.zarr"), d


def test_pool_keeps_shared_genes_union_panel_and_marks_unmeasured_proteins(tmp_path):
    sa, sb, d = two_labs(tmp_path)
    out = pool_stores([sa, sb], tmp_path / "pooled.zarr", genes="shared")
    info = store_info(out)
    assert list(info["genes"].index) == list(d.genes.index[10:])
    assert list(info["proteins"].index) == list(d.proteins.index)  # union, first-seen order
    obs = info["obs"]
    assert obs.index.is_unique  # the shared barcode got a per-dataset suffix
    assert obs.index[0].endswith("-labA")
    assert obs[DATASET_COLUMN].value_counts().to_dict() == {"labA": 240, "labB": 240}
    assert obs["cell_type"].isna().sum() == 240  # the unlabelled lab: missing, not the string "nan"
    panels = panels_of(info["uns"])
    assert panels["labA"] == list(d.proteins.index[:14])
    present = store_present(info)
    assert present[:240, :14].all()
    assert not present[:240, 14:].any()
    assert present[240:, 6:].all()
    assert not present[240:, :6].any()
    data = read_store(out)
    assert np.isnan(data.prot[:240, 14:]).all()
    assert np.array_equal(data.prot[240:, 6:], d.prot[240:, 6:])
    assert np.array_equal(data.rna.toarray(), d.rna[:, 10:].toarray())
    chunks = list(iter_store(out, chunk_cells=100))
    assert np.array_equal(np.isnan(np.concatenate([c[1] for c in chunks])), ~present)


def test_pool_union_genes_records_each_datasets_gene_panel(tmp_path):
    sa, sb, d = two_labs(tmp_path)
    out = pool_stores([sa, sb], tmp_path / "pooled.zarr")  # default: the union of the genes
    info = store_info(out)
    assert list(info["genes"].index) == list(d.genes.index)  # lab A has every gene, first-seen order
    gene_panels = panels_of(info["uns"], GENE_PANELS_KEY)
    assert gene_panels == {"labA": list(d.genes.index), "labB": list(d.genes.index[10:])}
    data = read_store(out)
    assert np.array_equal(data.rna[:240].toarray(), d.rna[:240].toarray())
    assert np.array_equal(data.rna[240:, 10:].toarray(), d.rna[240:, 10:].toarray())
    assert data.rna[240:, :10].nnz == 0  # unmeasured genes are stored as 0 ...
    codes, table = store_gene_masks(info)  # ... and recorded as unmeasured
    assert codes.tolist() == [0] * 240 + [1] * 240
    assert table[0].all()
    assert not table[1, :10].any()
    assert table[1, 10:].all()
    # over a model's genes: one outside every panel counts as unmeasured
    _, model_table = store_gene_masks(info, [d.genes.index[0], d.genes.index[20], "NOT_A_GENE"])
    assert model_table.tolist() == [[True, True, False], [False, True, False]]
    groups = dataset_groups((codes, table), store_protein_masks(info))  # each lab: its genes and its panel
    assert [(c, rows.size, len(gcols), len(pcols)) for c, rows, gcols, pcols in groups] == [(0, 240, 80, 14),
                                                                                            (1, 240, 70, 14)]
    assert column_names(list(d.gene_names), groups[1][2])[0] == d.gene_names[10]
    assert dataset_groups(None, None) == [(-1, slice(None), slice(None), slice(None))]
    same = pool_stores([sa, sb], tmp_path / "shared.zarr", genes="shared")
    assert GENE_PANELS_KEY not in store_info(same)["uns"]  # every cell measured every kept gene
    obs = pd.DataFrame({DATASET_COLUMN: ["a", "c"]}, index=["1", "2"])
    with pytest.raises(InputError, match="no gene panel"):
        gene_masks(obs, ["G1"], {"a": [], "b": ["G1"]})
    with pytest.raises(InputError, match="union, shared"):
        pool_stores([sa, sb], tmp_path / "x.zarr", genes="all")


def test_pool_refusals_are_one_line(tmp_path):
    sa, sb, _ = two_labs(tmp_path)
    with pytest.raises(InputError, match="two or more"):
        pool_stores([sa], tmp_path / "p.zarr")
    with pytest.raises(InputError, match="unique"):
        pool_stores([sa, sb], tmp_path / "p.zarr", names=["x", "x"])
    with pytest.raises(InputError, match="not in every store"):
        pool_stores([sa, sb], tmp_path / "p.zarr", genes=[store_info(sa)["genes"].index[0]])
    pooled = pool_stores([sa, sb], tmp_path / "p.zarr")
    with pytest.raises(InputError, match="already a pooled store"):
        pool_stores([pooled, sa], tmp_path / "q.zarr")
    assert not (tmp_path / "q.zarr").exists()


def test_pool_never_replaces_a_store_it_reads(tmp_path):
    """--overwrite replaces an earlier output, never an input store or a folder holding one."""
    sa, sb, _ = two_labs(tmp_path)
    before = store_info(sa)
    for out in (sa, tmp_path):
        with pytest.raises(InputError, match="input"):
            pool_stores([sa, sb], out, overwrite=True)
    after = store_info(sa)
    assert list(after["genes"].index) == list(before["genes"].index)
    assert DATASET_COLUMN not in after["obs"].columns
    assert read_store(sb).n_cells == 240
    pooled = pool_stores([sa, sb], tmp_path / "p.zarr")
    assert pool_stores([sa, sb], pooled, overwrite=True) == pooled  # an earlier output is replaced


def test_pool_gene_list_naming_a_gene_twice(tmp_path):
    sa, sb, _ = two_labs(tmp_path)
    shared = list(store_info(sb)["genes"].index[:5])
    pooled = pool_stores([sa, sb], tmp_path / "p.zarr", genes=[*shared, shared[0]])
    assert list(store_info(pooled)["genes"].index) == shared


def test_dataset_names_from_paths(tmp_path):
    assert dataset_names(["a/x.zarr", "b/y.zarr"]) == ["x", "y"]
    assert dataset_names([tmp_path / "pbmc" / "store.zarr", tmp_path / "brem" / "store.zarr"]) == ["pbmc", "brem"]


def test_protein_present_checks_its_inputs():
    obs = pd.DataFrame({DATASET_COLUMN: ["a", "b", "a"]}, index=["1", "2", "3"])
    mask = protein_present(obs, ["P1", "P2"], {"a": ["P1"], "b": ["P1", "P2"]})
    assert mask.tolist() == [[True, False], [True, True], [True, False]]
    assert protein_present(obs, ["P1", "P2"], {"a": ["P1", "P2"], "b": ["P2", "P1"]}) is None
    assert protein_present(obs, ["P1"], None) is None
    with pytest.raises(InputError, match="no protein panel"):
        protein_present(obs, ["P1"], {"a": ["P1"]})
    with pytest.raises(InputError, match="lacks"):
        protein_present(obs, ["P1"], {"a": ["P1", "P9"], "b": ["P1"]})


def test_resolve_genes_from_list_file_and_inputs(tmp_path):
    store_genes = [f"G{i}" for i in range(10)]
    assert resolve_genes([], store_genes) is None
    assert resolve_genes(["G3", "G1", "G2", "X"], store_genes) == ["G1", "G2", "G3"]  # store order
    f = tmp_path / "genes.txt"
    f.write_text("# shared genes\nG5\n\nG6  # a comment\n")
    assert read_gene_list(f) == ["G5", "G6"]
    assert resolve_genes(str(f), store_genes) == ["G5", "G6"]
    with pytest.raises(InputError, match="same kind of gene name"):
        resolve_genes(["ENSG1", "ENSG2", "G1"], store_genes)
    d = make_synthetic(n_cells=50, n_genes=30, n_proteins=4, seed=1)
    d.rna, d.genes = d.rna[:, 5:], d.genes.iloc[5:]
    query = write_store(d, tmp_path / "query.zarr")
    all_genes = [str(g) for g in make_synthetic(n_cells=5, n_genes=30, n_proteins=4, seed=1).genes.index]
    assert resolve_genes(None, all_genes, [query]) == all_genes[5:]
    with pytest.raises(InputError, match="not found"):
        resolve_genes(None, all_genes, [tmp_path / "nope.h5ad"])


def test_pooled_protein_is_never_read_as_zero_counts(tmp_path):
    from omicsclip.index.refprotein import reference_protein
    from omicsclip.io.readers import open_input

    sa, sb, d = two_labs(tmp_path)
    pooled = pool_stores([sa, sb], tmp_path / "pooled.zarr", genes="shared")
    with open_input([pooled], require="any") as src:  # as an input: RNA only, the protein would be misread
        assert src.proteins is None
        assert src.genes == [str(g) for g in d.genes.index[10:]]
    with pytest.raises(InputError, match="pooled from several antibody panels"):
        open_input([pooled], require="both")
    union = pool_stores([sa, sb], tmp_path / "union.zarr")  # its RNA: only the genes every dataset measured
    with open_input([union], require="any") as src:
        assert src.genes == [str(g) for g in d.genes.index[10:]]
    ids = store_info(pooled)["obs"].index
    clr, names = reference_protein(pooled, ids, None)
    assert names == list(d.proteins.index)
    assert np.isnan(clr[:240, 14:]).all()
    assert np.isfinite(clr[:240, :14]).all()
    assert np.isnan(clr[240:, :6]).all()
    lp = np.log1p(d.prot[240:, 6:].astype(np.float64))
    np.testing.assert_allclose(clr[240:, 6:], lp - lp.mean(1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_pool_refuses_one_store_given_twice(tmp_path):
    """The same folder (also through a link) or a copy of an ingested store: its cells would be pooled twice."""
    import shutil

    from omicsclip.io.ingest import ingest

    sa, sb, d = two_labs(tmp_path)
    (tmp_path / "link.zarr").symlink_to(sa, target_is_directory=True)
    for dup in (sa, tmp_path / "link.zarr"):
        with pytest.raises(InputError, match=r"^pool: .*labA.zarr and .*\.zarr are the same store; give each"):
            pool_stores([sa, sb, dup], tmp_path / "p.zarr", names=["a", "b", "c"])
    d.to_anndata().write_h5ad(tmp_path / "cells.h5ad")
    ingested = ingest([tmp_path / "cells.h5ad"], tmp_path / "ing.zarr")
    shutil.copytree(ingested, tmp_path / "copy.zarr")
    with pytest.raises(InputError, match="are copies of one store"):
        pool_stores([ingested, tmp_path / "copy.zarr"], tmp_path / "p.zarr")
    assert not (tmp_path / "p.zarr").exists()
    # two halves cut from that store keep its ingest time, counts of features and names: still two datasets
    whole = read_store(ingested)
    halves = [write_store(whole.subset(np.arange(i * 240, (i + 1) * 240)), tmp_path / f"half{i}.zarr")
              for i in range(2)]
    assert pool_stores(halves, tmp_path / "p.zarr").exists()


def test_inspect_shows_each_pooled_datasets_cells_genes_and_panel(tmp_path):
    from omicsclip.io.summary import format_summary, inspect_store

    sa, sb, d = two_labs(tmp_path)
    summary = inspect_store(pool_stores([sa, sb], tmp_path / "pooled.zarr", genes="union"))
    assert summary["datasets"] == {
        "labA": {"n_cells": 240, "n_genes": 80, "n_proteins": 14, "proteins_not_measured": list(d.proteins.index[14:])},
        "labB": {"n_cells": 240, "n_genes": 70, "n_proteins": 14, "proteins_not_measured": list(d.proteins.index[:6])},
    }
    text = format_summary(summary)
    assert "datasets   2 pooled" in text
    assert re.search(rf"\n  labB +240 cells +70 genes +14 proteins \(not: {', '.join(d.proteins.index[:6])}\)\n", text)
    assert inspect_store(sa)["datasets"] == {}  # one dataset: nothing to show
    assert "datasets" not in format_summary(inspect_store(sa))
