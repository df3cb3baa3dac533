"""Genome prefixes on gene names (``hg19_CD3E``) are removed when every gene carries the same one."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import shared_h5ad

from omicsclip.errors import InputError
from omicsclip.io.gene_names import genome_prefix, mismatch_hint, strip_genome_prefix
from omicsclip.io.genesets import gene_names_of, resolve_genes
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


HUMAN = ["CD3E", "CD4", "CD8A", "MS4A1", "CD14", "LYZ", "NKG7", "GNLY", "FCGR3A", "IL7R", "CCR7", "S100A8"]
MOUSE = [g.capitalize() for g in HUMAN]  # Cd3e, Cd4, ...: the same genes, mouse symbols


def test_mismatch_hint_names_case_and_id_mixups_only():
    assert "12 more match when case is ignored (e.g. CCR7 / Ccr7)" in mismatch_hint(HUMAN, MOUSE)
    assert "Ensembl ID (e.g. ENSG00000010610)" in mismatch_hint(HUMAN, ["ENSG00000010610", "ENSG00000198851.4"])
    assert mismatch_hint(HUMAN, HUMAN[:5] + ["NEW1"]) == ""  # plain overlap: nothing to say
    assert mismatch_hint(HUMAN, ["Cd3e", "CD4"]) == ""  # one re-cased name among matches is no pattern
    assert mismatch_hint([], MOUSE) == ""


def test_genes_from_another_species_is_refused_with_the_reason(tmp_path):
    mouse = tmp_path / "mouse.h5ad"
    _adata(MOUSE).write_h5ad(mouse)
    with pytest.raises(InputError, match=r"mouse.h5ad: shares no gene with the training store; 12 more match when "
                                          r"case is ignored"):
        resolve_genes(None, HUMAN, [mouse])


def test_genes_from_counts_repeated_names_apart(tmp_path, caplog):
    path = tmp_path / "dups.h5ad"
    with pytest.warns(UserWarning, match="not unique"):  # anndata's: the file keeps the repeat
        _adata(HUMAN[:4] + ["CD3E"]).write_h5ad(path)
    with caplog.at_level(logging.INFO, logger="omicsclip.io.genesets"):
        assert resolve_genes(None, HUMAN, [path]) == HUMAN[:4]
    assert "4 genes (and 1 repeated name(s), suffixed -1, -2, ... as ingest --make-unique does), 4 of 12 shared" in \
        caplog.text


def test_pooling_two_species_says_why_they_share_nothing(tmp_path, caplog):
    from omicsclip.io.pool import pool_stores

    human = ingest(_adata(HUMAN), tmp_path / "human.zarr")
    mouse = ingest(_adata(MOUSE, seed=1), tmp_path / "mouse.zarr")
    with pytest.raises(InputError, match="pool: the stores share no gene; 12 more match when case is ignored"):
        pool_stores([human, mouse], tmp_path / "shared.zarr", genes="shared")
    assert not (tmp_path / "shared.zarr").exists()
    with caplog.at_level(logging.WARNING, logger="omicsclip.io.pool"):
        pool_stores([human, mouse], tmp_path / "union.zarr", genes="union")
    assert "pool: human and mouse share 0 genes; 12 more match when case is ignored" in caplog.text


def test_a_query_refused_for_its_genes_says_they_are_another_species():
    from types import SimpleNamespace

    from omicsclip.model.alignment import refuse_lacking

    state = SimpleNamespace(genes=HUMAN, gene_panels=None, datasets=None, max_missing_gene_fraction=0.2)
    with pytest.raises(InputError, match="case is ignored") as err:
        refuse_lacking(HUMAN, state, "genes", "RNA input", MOUSE)
    assert "--genes-from" not in str(err.value)  # training on shared genes would not help here
    with pytest.raises(InputError, match="--genes-from THIS_INPUT"):  # a real subset: train on the shared genes
        refuse_lacking(HUMAN[:6], state, "genes", "RNA input", HUMAN[6:])
