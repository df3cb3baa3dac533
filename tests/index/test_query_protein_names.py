"""Query inputs whose panel names proteins differently still match the model, through canonical names."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import anndata as ad
import faiss
import numpy as np
import pandas as pd
import pytest

from omicsclip.config import default_config
from omicsclip.errors import InputError
from omicsclip.index.query import query
from omicsclip.index.query_input import open_query_input
from omicsclip.index.reference import ReferenceIndex, write_index_dir
from omicsclip.io.paired import PairedData
from omicsclip.io.synthetic import make_synthetic
from omicsclip.model.preprocess import clr

CANONICAL = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD19"]
ALIASES = ["CD3_TotalSeqB", "cd4", "CD8", "ADT_CD14", "FcgRIII", "CD19"]
OLD = ["CD3", "CD4", "CD8", "CD14", "FCGR3A", "CD19"]  # a model trained before harmonisation


@pytest.fixture(autouse=True)
def _faiss_threads():
    faiss.omp_set_num_threads(2)


class FakeModel:
    """Stand-in for TrainedModel: proteins matched by exact name, log counts through a fixed projection."""

    def __init__(self, proteins, dim=8):
        self.genes, self.proteins = [], list(proteins)
        self.w = np.random.default_rng(0).normal(size=(len(proteins), dim)).astype(np.float32)
        self.fingerprint, self.embed_dim = "fake-model", dim
        self.config = {"preprocess": {"max_missing_gene_fraction": 0.2}}
        self.state = SimpleNamespace(genes=self.genes, proteins=self.proteins, gene_panels=None, panels=None,
                                     datasets=None, max_missing_gene_fraction=0.2, max_missing_protein_fraction=0.4)

    def embed(self, rna=None, prot=None, *, genes=None, proteins=None, batch_size=4096):
        pos = pd.Index(list(proteins)).get_indexer(self.proteins)
        x = np.zeros((prot.shape[0], len(self.proteins)), np.float32)
        x[:, pos >= 0] = np.asarray(prot)[:, pos[pos >= 0]]
        e = np.log1p(x) @ self.w
        return {"prot": (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)}


def _named(d: PairedData, names) -> PairedData:
    return PairedData(rna=None, prot=d.prot, obs=d.obs, genes=pd.DataFrame(), proteins=pd.DataFrame(index=names))


def _write_prot_h5ad(d: PairedData, names, path):
    """A protein-only .h5ad: X = protein counts, var = the panel's names."""
    ad.AnnData(X=np.asarray(d.prot, np.float32), obs=pd.DataFrame(index=d.obs.index.astype(str)),
               var=pd.DataFrame(index=list(names))).write_h5ad(path)
    return path


def _world(tmp_path, model_names):
    data = make_synthetic(n_cells=260, n_genes=30, n_proteins=6, n_types=4, seed=0)
    assert data.protein_names == CANONICAL
    ref, new = data.subset(slice(0, 200)), data.subset(slice(200, 260))
    model = FakeModel(model_names)
    emb = model.embed(prot=ref.prot, proteins=model_names)
    emb["rna"] = emb["prot"]
    write_index_dir(tmp_path / "index", embeddings=emb, cell_ids=ref.barcodes, model_fingerprint=model.fingerprint,
                    section=default_config()["index"], protein=clr(ref.prot), protein_names=model_names,
                    labels=pd.DataFrame({"cell_type": ref.obs["cell_type"].astype(str).to_numpy()}))
    return model, ReferenceIndex.load(tmp_path / "index"), new


def test_alias_names_match_a_model_on_canonical_names(tmp_path, caplog):
    model, index, new = _world(tmp_path, CANONICAL)
    ingest = default_config()["ingest"]
    base = query(_named(new, CANONICAL), model, index, k=5)
    path = _write_prot_h5ad(new, ALIASES, tmp_path / "other_lab.h5ad")
    with caplog.at_level(logging.INFO):
        from_file = query(path, model, index, k=5, modality="prot", ingest=ingest)
    assert from_file.summary["feature_matching"]["prot"]["n_missing"] == 0
    pd.testing.assert_frame_equal(from_file.neighbours.drop(columns="query_id"),
                                  base.neighbours.drop(columns="query_id"))
    assert any("protein names: 5 mapped" in r.getMessage() and "FcgRIII -> CD16" in r.getMessage()
               for r in caplog.records)
    in_memory = query(_named(new, ALIASES), model, index, k=5, ingest=ingest)
    pd.testing.assert_frame_equal(in_memory.neighbours, base.neighbours)
    with pytest.raises(InputError, match="lacks 5 of the model's 6 proteins"):  # exact names: only CD19
        query(_named(new, ALIASES), model, index, k=5, ingest={**ingest, "harmonise_proteins": False})


def test_a_model_with_old_names_is_matched_by_canonical_name(tmp_path, caplog):
    model, index, new = _world(tmp_path, OLD)
    base = query(_named(new, OLD), model, index, k=5)
    ingest = default_config()["ingest"]
    with caplog.at_level(logging.INFO):
        src = open_query_input(_named(new, ALIASES), ingest=ingest, model_proteins=model.proteins)
    assert src.proteins == OLD
    assert dict(zip(src.info["protein_matching"]["mapped_from"], src.info["protein_matching"]["mapped_to"],
                    strict=True)) == {"CD8a": "CD8", "CD16": "FCGR3A"}
    assert any("vs the model's: 2 mapped" in r.getMessage() for r in caplog.records)
    res = query(src, model, index, k=5)
    pd.testing.assert_frame_equal(res.neighbours, base.neighbours)
    path = _write_prot_h5ad(new, ["CD3", "CD4", "CD8a", "CD14", "CD16", "Extra"], tmp_path / "q.h5ad")
    with open_query_input([path], modality="prot", ingest=ingest, model_proteins=model.proteins) as src:
        assert src.proteins == ["CD3", "CD4", "CD8", "CD14", "FCGR3A", "Extra"]
        assert src.info["protein_matching"]["unknown"] == ["Extra"]
        chunk = next(src.iter_chunks(10))
        assert chunk.protein_names == src.proteins
        assert list(chunk.proteins["original_name"]) == ["CD3", "CD4", "CD8a", "CD14", "CD16", "Extra"]


def test_a_users_alias_file_is_judged_once_when_the_query_is_read(tmp_path, caplog):
    """The names are harmonised when read, then matched to the model: only the first step can tell whether an
    entry of the user's file named a column (by the second, the column has its new name)."""
    model, _, new = _world(tmp_path, OLD)
    aliases = tmp_path / "ours.tsv"
    aliases.write_text("MyCD3\tCD3\nMisspelt-CD4\tCD4\n")
    ingest = {**default_config()["ingest"], "protein_aliases": str(aliases)}
    with caplog.at_level(logging.INFO):
        src = open_query_input(_named(new, ["MyCD3", *ALIASES[1:]]), ingest=ingest, model_proteins=model.proteins)
    assert src.proteins == OLD
    assert src.info["protein_names"]["unused_aliases"] == ["Misspelt-CD4"]
    assert src.info["protein_matching"]["unused_aliases"] == []
    assert "1 entries of the user alias file named no column (Misspelt-CD4)" in caplog.text
    assert "none of the" not in caplog.text  # MyCD3 was used: no 'wrong file' warning at either step
