"""Genome prefixes on gene names (``hg19_CD3E``) are removed when every gene carries the same one."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import shared_h5ad

from omicsclip.io.gene_names import genome_prefix, strip_genome_prefix
from omicsclip.io.genesets import gene_names_of
from omicsclip.io.ingest import ingest
from omicsclip.io.readers import open_input
from omicsclip.io.store import read_store, store_info

GENES = ["CD3E", "MS4A1", "AL627309.1", "HLA-DRA", "RP11-34P13.7"]


@pytest.mark.parametrize("prefix", ["hg19_", "GRCh38_", "GRCh38-", "mm10___", "mm10-", "GRCm39_", "hg38."])
def test_a_prefix_every_gene_shares_is_removed(prefix):
    names, found = strip_genome_prefix([prefix + g for g in GENES])
    assert (names, found) == (GENES, prefix)


@pytest.mark.parametrize("names", [
    GENES,  # no prefix
    ["hg19_CD3E", "mm10_Cd3e"],  # a barnyard: two genomes, the species is the user's choice
    ["hg19_CD3E", "MS4A1"],  # not every gene
    ["hg19_", "hg19_CD3E"],  # a name that is only the prefix
    ["HG1_CD3E", "HG1_MS4A1"],  # not a genome build
    [],
])
def test_names_without_one_shared_genome_prefix_are_kept(names):
    assert strip_genome_prefix(names) == (names, None)


def test_genome_prefix_of_one_name():
    assert genome_prefix("GRCh38_CD3E") == "GRCh38_"
    assert genome_prefix("hg19") is None
    assert genome_prefix("CD3E") is None


def _adata(genes, n=30, seed=0):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (n, len(genes))).astype(np.float32)), obs=obs,
                   var=pd.DataFrame(index=genes))
    a.obsm["protein"] = pd.DataFrame(rng.poisson(20, (n, 3)).astype(np.float32), index=obs.index,
                                     columns=["CD3", "CD4", "CD19"])
    return a


def test_ingest_stores_plain_names_keeps_the_originals_and_says_so(tmp_path, caplog):
    a = _adata([f"hg19_{g}" for g in GENES])
    with caplog.at_level(logging.INFO):
        out = ingest(a, tmp_path / "s.zarr")
    info = store_info(out)
    assert list(info["genes"].index) == GENES
    assert list(info["genes"]["original_name"]) == [f"hg19_{g}" for g in GENES]
    assert "genome prefix 'hg19_' removed from all 5 gene names" in info["uns"]["provenance"]["notes"]
    assert any("genome prefix 'hg19_' removed" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(read_store(out).rna.toarray(), a.X.toarray())  # counts follow their genes


def test_query_inputs_and_gene_sets_see_plain_names(tmp_path):
    """``--genes-from`` and every reader (query, predict) match a prefixed lab's genes to plain ones."""
    path = tmp_path / "prefixed.h5ad"
    _adata([f"GRCh38_{g}" for g in GENES]).write_h5ad(path)
    assert gene_names_of(path) == GENES
    with open_input([path]) as src:
        assert src.genes == GENES
        assert src.info["gene_prefix"] == "GRCh38_"


def test_a_barnyard_input_keeps_its_names(tmp_path):
    path = tmp_path / "barnyard.h5ad"
    _adata(["hg19_CD3E", "hg19_MS4A1", "mm10_Cd3e"]).write_h5ad(path)
    with open_input([path]) as src:
        assert src.genes == ["hg19_CD3E", "hg19_MS4A1", "mm10_Cd3e"]
        assert "gene_prefix" not in src.info


def test_eccite_hg19_genes_meet_pbmc10k():
    """The real ECCITE-seq subset (every gene ``hg19_``-prefixed) shares thousands of genes with pbmc10k."""
    eccite, pbmc10k = shared_h5ad("eccite_pbmc_citefuse"), shared_h5ad("pbmc10k_protein_v3")
    shared = set(gene_names_of(eccite)) & set(gene_names_of(pbmc10k))
    assert len(shared) > 3500  # 3,878 (bench/transfer.py pbmc10k:eccite); 0 before prefixes were removed
