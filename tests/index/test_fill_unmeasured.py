"""A protein some of a query cell's neighbours did not measure (pooled panels) comes from the nearest cells that did."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_query import FakeModel, rna_only

from omicsclip.config import default_config
from omicsclip.index.impute import fill_unmeasured, impute, neighbour_weights
from omicsclip.index.query import query
from omicsclip.index.reference import ReferenceIndex, write_index_dir
from omicsclip.io.synthetic import make_synthetic
from omicsclip.model.preprocess import clr


def test_fill_unmeasured_known_inputs():
    # 5 reference cells, 2 proteins; protein 1 measured only by cells 3 and 4
    reference = np.array([[1, np.nan], [2, np.nan], [3, np.nan], [4, 10], [5, 20]], np.float32)
    pos = np.array([[0, 1, 2, 3, 4], [2, 1, 0, -1, -1]])
    sims = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, 0.8, 0.7, 0, 0]])
    imputed = impute(reference, pos[:, :2].clip(0), neighbour_weights(sims[:, :2], 0.1))
    assert np.isnan(imputed[:, 1]).all()  # the two nearest measured only protein 0
    before = imputed[:, 0].copy()
    left = fill_unmeasured(imputed, reference, pos, sims, k=2, temperature=0.1)
    w = neighbour_weights(np.array([[0.6, 0.5]]), 0.1)[0]
    np.testing.assert_allclose(imputed[0, 1], w @ [10, 20], rtol=1e-6)  # the first 2 cells that measured it
    np.testing.assert_array_equal(imputed[:, 0], before)  # measured entries unchanged
    assert np.isnan(imputed[1, 1])  # no cell of its (shorter) search measured it
    assert left == 1
    # need_k: an entry with fewer than k measuring neighbours in the search waits for a deeper one
    again = impute(reference, pos[:, :2].clip(0), neighbour_weights(sims[:, :2], 0.1))
    assert fill_unmeasured(again, reference, pos, sims, k=3, temperature=0.1, need_k=True) == 2
    fill_unmeasured(again, reference, pos, sims, k=3, temperature=0.1)
    np.testing.assert_allclose(again[0, 1], w @ [10, 20], rtol=1e-6)  # the 2 there are


def test_pooled_panel_query_has_no_holes(tmp_path):
    """A reference whose last protein only one cell type measured: queries of the other types still get it."""
    data = make_synthetic(n_cells=460, n_genes=60, n_proteins=6, n_types=4, seed=0)
    ref, new = data.subset(slice(0, 400)), data.subset(slice(400, 460))
    model = FakeModel(data.gene_names, data.protein_names)
    emb = model.embed(ref.rna, ref.prot, genes=ref.gene_names, proteins=ref.protein_names)
    protein = clr(ref.prot)
    types = ref.obs["cell_type"].astype(str).to_numpy()
    protein[types != types[0], -1] = np.nan  # measured by one "dataset" only: the cells of one type
    write_index_dir(tmp_path / "i", embeddings=emb, cell_ids=ref.barcodes, model_fingerprint=model.fingerprint,
                    section=default_config()["index"], protein=protein, protein_names=ref.protein_names,
                    labels=pd.DataFrame({"cell_type": types}))
    index = ReferenceIndex.load(tmp_path / "i")
    sec = {"k": 5, "impute_k": 5, "temperature": 0.1}
    res = query(rna_only(new), model, index, section=sec)
    assert not np.isnan(res.imputed.X).any()
    # every cell gets the weighted mean of the 5 nearest cells that measured the protein: a cell none of whose 5
    # nearest did, and a cell only some of whose 5 nearest did (not the mean over those few)
    q = model.embed(new.rna, genes=new.gene_names)["rna"]
    has = np.flatnonzero(~np.isnan(protein[:, -1]))
    nearest = np.argsort(-(q @ emb["rna"].T), axis=1)[:, :5]
    n_measured = np.isin(nearest, has).sum(axis=1)
    assert (n_measured == 0).sum() >= 20
    assert ((n_measured > 0) & (n_measured < 5)).sum() >= 3
    sims = q @ emb["rna"][has].T
    top = np.argsort(-sims, axis=1)[:, :5]
    w = neighbour_weights(np.take_along_axis(sims, top, 1), 0.1)
    expect = (w * protein[has[top], -1]).sum(1)
    np.testing.assert_allclose(res.imputed.X[:, -1], expect, rtol=1e-4, atol=1e-5)
    # the proteins every cell measured: the plain weighted mean over the 5 nearest
    sims_all = np.take_along_axis(q @ emb["rna"].T, nearest, 1)
    plain = impute(protein, nearest, neighbour_weights(sims_all, 0.1))
    np.testing.assert_allclose(res.imputed.X[:, :-1], plain[:, :-1], rtol=1e-4, atol=1e-5)


def test_a_protein_no_reference_cell_measured_is_not_searched_for(tmp_path, monkeypatch):
    """It stays NaN, and no query chunk pays for deeper searches that cannot find it."""
    data = make_synthetic(n_cells=460, n_genes=60, n_proteins=6, n_types=4, seed=0)
    ref, new = data.subset(slice(0, 400)), data.subset(slice(400, 460))
    model = FakeModel(data.gene_names, data.protein_names)
    emb = model.embed(ref.rna, ref.prot, genes=ref.gene_names, proteins=ref.protein_names)
    sec = {"k": 5, "impute_k": 5, "temperature": 0.1}
    depths: dict[str, list[int]] = {}
    for name, last in (("measured", False), ("never_measured", True)):
        protein = clr(ref.prot)
        if last:
            protein[:, -1] = np.nan
        write_index_dir(tmp_path / name, embeddings=emb, cell_ids=ref.barcodes, model_fingerprint=model.fingerprint,
                        section=default_config()["index"], protein=protein, protein_names=ref.protein_names)
        index = ReferenceIndex.load(tmp_path / name)
        calls = depths.setdefault(name, [])
        search = index.search
        monkeypatch.setattr(index, "search", lambda m, q, k, calls=calls, search=search: (calls.append(k),
                                                                                            search(m, q, k))[1])
        res = query(rna_only(new), model, index, section=sec)
    assert np.isnan(res.imputed.X[:, -1]).all()
    assert np.isfinite(res.imputed.X[:, :-1]).all()
    assert depths["never_measured"] == depths["measured"]  # the query's own searches, none deeper
