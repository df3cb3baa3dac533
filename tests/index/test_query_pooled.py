"""Querying a reference pooled from labs with different gene sets and antibody panels: each lab's own genes and
panel are complete for the model (held to the training dataset it covers best), never refused for lacking the
other labs' features, as the README promises; the refusal threshold still holds within a lab's own set."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, pooled_two_labs

from omicsclip.config import load_config
from omicsclip.errors import InputError
from omicsclip.index.query import query


@pytest.fixture(scope="module")
def pooled_ref(tmp_path_factory):
    """Lab A measured genes 0-59 and proteins 0-3, lab B genes 30-89 and proteins 3-9: a pooled model and index."""
    from omicsclip.index.from_embeddings import index_embeddings
    from omicsclip.model.embed import embed_store
    from omicsclip.model.modelio import load_model
    from omicsclip.train.run import train_model

    tmp = tmp_path_factory.mktemp("pooled_query")
    pooled, a, b = pooled_two_labs(tmp, prot_a=4)
    cfg = load_config(None, TINY)
    train_model(pooled, tmp / "model", cfg)
    embed_store(pooled, tmp / "model", tmp / "emb.zarr")
    index_embeddings(tmp / "emb.zarr", tmp / "index", cfg["index"])
    return {"model": load_model(tmp / "model"), "index": tmp / "index", "labs": {"A": a, "B": b}}


@pytest.mark.parametrize("lab", ["A", "B"])
def test_each_labs_own_genes_and_panel_query_the_pooled_reference(pooled_ref, lab):
    model, cells = pooled_ref["model"], pooled_ref["labs"][lab].subset(np.arange(40))
    # what the check before this fix compared: the model's union of genes / proteins
    union_gap = {"rna": 1 - np.isin(model.genes, cells.gene_names).mean(),
                 "prot": 1 - np.isin(model.proteins, cells.protein_names).mean()}
    assert union_gap["rna"] > model.state.max_missing_gene_fraction or \
        union_gap["prot"] > model.state.max_missing_protein_fraction  # the union check refused this lab
    res = query(cells, model, pooled_ref["index"], k=5)
    matching = res.summary["feature_matching"]
    assert matching["rna"]["missing_fraction"] == 0.0
    assert matching["prot"]["missing_fraction"] == 0.0
    assert matching["rna"]["n_missing"] == round(union_gap["rna"] * len(model.genes))
    assert len(res.cells) == 40
    # the query's RNA embedding is the model's own for these cells: its nearest RNA reference cell is itself
    nb = res.neighbours
    own = nb[(nb["query_modality"] == "rna") & (nb["index_modality"] == "rna") & (nb["rank"] == nb["rank"].min())]
    assert list(own["query_id"]) == list(cells.obs.index)
    assert (own["reference_id"].to_numpy() == (cells.obs.index + f"-lab{lab}").to_numpy()).mean() > 0.9


def test_a_lab_missing_its_own_genes_is_still_refused(pooled_ref):
    model, b = pooled_ref["model"], pooled_ref["labs"]["B"]
    own = [g for g in model.state.gene_panels[1] if g in set(b.gene_names)]
    drop = set(own[: int(0.3 * len(own))])
    keep = [i for i, g in enumerate(b.gene_names) if g not in drop]
    cut = b.subset(np.arange(40))
    cut.rna, cut.genes = cut.rna[:, keep], cut.genes.iloc[keep]
    with pytest.raises(InputError, match=rf"query input: lacks {len(drop)} of the {len(own)} genes of the "
                                         r"training dataset it covers best, labB .*--genes-from"):
        query(cut, model, pooled_ref["index"], k=5)
