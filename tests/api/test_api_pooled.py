"""The notebook API on a store pooled from labs with different gene sets and antibody panels: ``embed`` and
``build_index`` give each lab's cells with its own genes and panel, as ``omicsclip embed`` and ``index`` do (the
generic reader would offer only the genes all labs share and no protein)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from conftest import TINY, pooled_two_labs

import omicsclip as oc
from omicsclip.conventions import EMBEDDING_KEYS


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """Lab A measured genes 0-59 and proteins 0-6, lab B genes 30-89 and proteins 3-9; a model on their pool."""
    tmp = tmp_path_factory.mktemp("api_pooled")
    store, a, b = pooled_two_labs(tmp)
    model = oc.train_model(store, tmp / "model", config=TINY)
    return {"tmp": tmp, "store": store, "model": model, "labs": (a, b)}


def test_embed_a_pooled_store_matches_the_cli(pooled):
    from omicsclip.model.embed import embed_store

    emb = pooled["model"].embed(pooled["store"])
    ref = ad.read_zarr(embed_store(pooled["store"], pooled["model"].path, pooled["tmp"] / "emb.zarr"))
    for mod, key in EMBEDDING_KEYS.items():
        np.testing.assert_allclose(emb[mod], ref.obsm[key], atol=1e-6)


def test_build_index_of_a_pooled_store_imputes_each_protein_from_cells_that_measured_it(pooled):
    model, (a, b) = pooled["model"], pooled["labs"]
    ref = oc.build_index(pooled["store"], model)
    assert ref.n_cells == a.n_cells + b.n_cells
    res = ref.query(_rna_only(b), k=5)
    assert list(res.var_names) == model.proteins
    assert np.isfinite(res.X).all()  # every protein imputed: from the cells (of either lab) that measured it


def _rna_only(data):
    cells = data.subset(np.arange(50))
    return ad.AnnData(X=cells.rna, obs=cells.obs.copy(), var=cells.genes.copy())


def test_a_pooled_store_embedded_by_another_model_keeps_each_datasets_missing_fraction(pooled):
    """A model trained on lab A alone: lab B's cells lack 3 of its 7 proteins, lab A's none; fit_head weighs each
    cell's protein embedding by its own dataset's fraction, as omicsclip embed + finetune do."""
    from omicsclip.api.model import embed_cells

    a, b = pooled["labs"]
    model = oc.train_model(pooled["tmp"] / "labA.zarr", pooled["tmp"] / "model_a",
                           config=[*TINY, "preprocess.max_missing_protein_fraction=0.5",
                                   "preprocess.max_missing_gene_fraction=0.9"])
    _, _, extra = embed_cells(model, pooled["store"], require="both")
    frac = extra["prot_missing_fraction"]
    np.testing.assert_allclose(frac[: a.n_cells], 0.0)
    np.testing.assert_allclose(frac[a.n_cells :], 3 / 7, rtol=1e-6)
