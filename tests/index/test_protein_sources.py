"""index.protein_sources: in a pooled reference each shared protein is imputed from the dataset measuring it best."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_query import TINY, rna_only

from omicsclip.config import load_config
from omicsclip.errors import InputError
from omicsclip.index.protein_sources import (
    apply_protein_sources,
    best_sources,
    dataset_types,
    protein_reliability,
)
from omicsclip.io.synthetic import make_synthetic


def clustered(n: int = 1200, seed: int = 0):
    """Unit embeddings in 4 clusters, two datasets; protein 0 noise in b, protein 1 noise in a, protein 2 a only."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 4, n)
    emb = np.eye(8, dtype=np.float32)[types] + 0.05 * rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    datasets = np.where(np.arange(n) % 2 == 0, "a", "b").astype(object)
    signal = types[:, None] * np.array([1.0, -1.0, 0.5]) + 0.1 * rng.normal(size=(n, 3))
    protein = signal.astype(np.float32)
    b, a = datasets == "b", datasets == "a"
    protein[b, 0] = rng.permutation(protein[b, 0])  # b's measurement of protein 0 carries no signal
    protein[a, 1] = rng.permutation(protein[a, 1])
    protein[b, 2] = np.nan  # only a measured protein 2
    return emb, protein, datasets, types


def test_reliability_picks_the_dataset_whose_measurement_the_embedding_predicts():
    emb, protein, datasets, _ = clustered()
    rel = protein_reliability(lambda r: emb[r], protein, datasets, ["p0", "p1", "p2"], seed=0)
    assert rel.loc["p0", "a"] > 0.9
    assert abs(rel.loc["p0", "b"]) < 0.3
    assert rel.loc["p1", "b"] > 0.9
    assert abs(rel.loc["p1", "a"]) < 0.3
    assert np.isnan(rel.loc["p2", "b"])
    assert rel.loc["p2", "a"] > 0.9
    assert best_sources(rel) == ({"p0": "a", "p1": "b"}, {})  # p2: one dataset, nothing to choose


def test_reference_halves_are_one_size_and_a_dead_antibody_never_wins(monkeypatch):
    import importlib

    impute_mod = importlib.import_module("omicsclip.index.impute")  # the module, not omicsclip.index's function
    emb, protein, datasets, _ = clustered(n=2700)
    datasets[:2000] = "big"  # halves of 1,000 and 350 cells: both reference halves hold 350
    datasets[2000:2700] = "small"
    protein[datasets == "small", 0] = 0.0  # a constant (dead) measurement: no correlation
    sizes = []
    real = impute_mod.knn_impute
    monkeypatch.setattr(impute_mod, "knn_impute", lambda q, r, v, **kw: (sizes.append(len(r)), real(q, r, v, **kw))[1])
    rel = protein_reliability(lambda r: emb[r], protein, datasets, ["p0", "p1", "p2"], seed=0)
    assert sizes == [350, 350]
    assert rel.loc["p0", "small"] == -1.0
    assert best_sources(rel)[0]["p0"] == "big"


def test_a_dataset_too_small_to_assess_is_never_the_source_and_keeps_its_values():
    emb, protein, datasets, _ = clustered(n=1300)
    datasets[1200:] = "tiny"  # 100 cells: 50 a half, below MIN_HALF
    protein[datasets == "tiny", 2] = 1.0  # and it measured protein 2, which only a measured besides
    before = protein.copy()
    rec = apply_protein_sources(protein, datasets, ["p0", "p1", "p2"], lambda r: emb[r], mode="best")
    assert "tiny" not in rec["reliability"]["p0"]
    assert rec["sources"] == {"p0": "a", "p1": "b"}  # p2: one assessed dataset, no choice
    tiny = datasets == "tiny"
    np.testing.assert_array_equal(protein[tiny], before[tiny])  # not assessed: nothing masked
    assert set(rec["measured_by"]["p2"]) == {"a", "tiny"}


def test_a_source_must_hold_every_cell_type_the_others_hold(caplog):
    """The cleaner dataset lacks two types the other holds: it is passed over, and query cells of those types are
    imputed from cells of their own type."""
    emb, protein, datasets, types = clustered(n=3000)
    a = datasets == "a"
    noisy = ~a
    protein[noisy, 0] += np.random.default_rng(1).normal(0, 0.6, noisy.sum()).astype(np.float32)  # b: noisier
    keep = ~(a & (types >= 2))  # a holds no cells of types 2 and 3
    emb, protein, datasets, types = emb[keep], protein[keep], datasets[keep], types[keep]
    labels = np.array([f"t{t}" for t in types], dtype=object)
    rel = protein_reliability(lambda r: emb[r], protein, datasets, ["p0", "p1", "p2"], seed=0)
    assert rel.loc["p0", "a"] > rel.loc["p0", "b"]  # a is the more reliable...
    sources, passed = best_sources(rel, dataset_types(labels, datasets))
    assert sources["p0"] == "b"  # ... but lacks types b holds
    assert passed["p0"] == {"a": ["t2", "t3"]}
    assert best_sources(rel)[0]["p0"] == "a"  # without labels it cannot tell
    # a handful of cells of a type is not holding it
    few = labels.copy()
    few[np.flatnonzero(datasets == "a")[:5]] = "t2"
    assert best_sources(rel, dataset_types(few, datasets))[0]["p0"] == "b"
    # unlabelled cells (missing, "None", "<NA>", ignore_labels values) of b ask nothing of a
    for missing in ("unknown", "None", "<NA>", None):
        unlabelled = np.where(datasets == "b", missing, labels).astype(object)
        assert best_sources(rel, dataset_types(unlabelled, datasets, ignore=["unknown"]))[0]["p0"] == "a"
    # through apply: one warning for the datasets passed over
    apply_protein_sources(protein.copy(), datasets, ["p0", "p1", "p2"], lambda r: emb[r], mode="best",
                          labels=labels)
    assert "passed over for lacking cell types" in caplog.text
    # an unlabelled source chosen over a labelled dataset: a warning that its types cannot be checked
    caplog.clear()
    half = np.where(datasets == "a", None, labels).astype(object)
    rec = apply_protein_sources(protein.copy(), datasets, ["p0", "p1", "p2"], lambda r: emb[r], mode="best",
                                labels=half)
    assert rec["sources"]["p0"] == "a"
    assert "cannot be checked" in caplog.text


def test_apply_masks_other_datasets_and_records_the_choice(caplog):
    emb, protein, datasets, _ = clustered()
    before = protein.copy()
    rec = apply_protein_sources(protein, datasets, ["p0", "p1", "p2"], lambda r: emb[r], mode="best")
    assert rec["sources"] == {"p0": "a", "p1": "b"}
    assert set(rec["reliability"]["p0"]) == {"a", "b"}
    assert set(rec["reliability"]["p2"]) == {"a"}
    a = datasets == "a"
    assert np.isnan(protein[~a, 0]).all()
    assert np.array_equal(protein[a, 0], before[a, 0])
    assert np.isnan(protein[a, 1]).all()
    assert np.array_equal(protein[~a, 1], before[~a, 1])
    np.testing.assert_array_equal(protein[:, 2], before[:, 2])  # NaN where it was, untouched elsewhere
    # nothing to do: all mode, no datasets, one dataset, a cell without a dataset (with a warning)
    no_name = datasets.copy()
    no_name[3] = None
    for mode, ds in (("all", datasets), ("best", None), ("best", np.full(len(datasets), "a")), ("best", no_name)):
        kept = before.copy()
        assert apply_protein_sources(kept, ds, ["p0", "p1", "p2"], lambda r: emb[r], mode=mode) is None
        np.testing.assert_array_equal(kept, before)
    assert "have no dataset" in caplog.text
    with pytest.raises(InputError, match="protein_sources"):
        apply_protein_sources(before.copy(), datasets, ["p0", "p1", "p2"], lambda r: emb[r], mode="first")


def test_pooled_index_sources_each_shared_protein_end_to_end(tmp_path):
    """Two labs, one of which measured a shared protein badly: the index keeps only the good lab's values of it."""
    from omicsclip.index.from_embeddings import index_embeddings
    from omicsclip.index.query import query
    from omicsclip.index.reference import ReferenceIndex
    from omicsclip.io.pool import pool_stores
    from omicsclip.io.store import write_store
    from omicsclip.model.embed import embed_store
    from omicsclip.model.modelio import load_model
    from omicsclip.train.run import train_model

    d = make_synthetic(n_cells=1200, n_genes=80, n_proteins=6, n_types=4, seed=3)
    a, b = d.subset(np.arange(600)), d.subset(np.arange(600, 1200))  # 300 cells a half: assessed
    b.prot = b.prot.copy()
    b.prot[:, 1] = np.random.default_rng(0).permutation(b.prot[:, 1])  # lab b's antibody 1: no signal
    b.prot, b.proteins = b.prot[:, :5], b.proteins.iloc[:5]  # and no protein 5
    pooled = pool_stores([write_store(a, tmp_path / "labA.zarr"), write_store(b, tmp_path / "labB.zarr")],
                         tmp_path / "pooled.zarr")
    cfg = load_config(None, TINY)
    train_model(pooled, tmp_path / "model", cfg)
    embed_store(pooled, tmp_path / "model", tmp_path / "emb.zarr")
    index_embeddings(tmp_path / "emb.zarr", tmp_path / "index", cfg["index"])
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    rec = meta["source"]["protein_sources"]
    p1 = str(d.protein_names[1])
    assert rec["sources"][p1] == "labA"
    assert rec["reliability"][p1]["labA"] > rec["reliability"][p1]["labB"] + 0.3
    assert set(rec["sources"]) == {str(p) for p in d.protein_names[:5]}  # protein 5: lab a only
    index = ReferenceIndex.load(tmp_path / "index")
    in_b = np.char.endswith(index.cell_ids.astype(str), "-labB")
    for p, src in rec["sources"].items():
        j = list(meta["proteins"]).index(p)
        from_src = in_b if src == "labB" else ~in_b
        assert np.isnan(index.protein[~from_src, j]).all()
        assert np.isfinite(index.protein[from_src, j]).all()
    model = load_model(tmp_path / "model")
    new = d.subset(np.arange(1180, 1200))
    res = query(rna_only(new), model, index, section=cfg["query"])
    assert np.isfinite(res.imputed.X).all()
    assert res.summary["protein_sources"] == rec["sources"]  # the query reports where each protein came from
