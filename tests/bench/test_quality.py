"""bench/quality.py's feature-matched baselines (a diagnostic beside the quality bar) on a tiny trained model."""

from __future__ import annotations

import math

from conftest import load_bench, tiny_store


def test_feature_matched_baselines_run_on_a_trained_model(tmp_path):
    from omicsclip.config import load_config
    from omicsclip.model.modelio import load_model
    from omicsclip.train.run import train_model

    quality = load_bench("quality")
    store = tiny_store(tmp_path / "s.zarr", n_cells=400, n_genes=120, n_proteins=6)
    cfg = load_config(None, ["train.epochs=1", "train.batch_size=64", "preprocess.n_hvg=80", "preprocess.n_pcs=10",
                             "model.rna_hidden=[16]", "model.prot_hidden=[8]", "model.embed_dim=8", "model.members=1"])
    train_model(store, tmp_path / "model", cfg)
    genes = load_model(tmp_path / "model").state.protein_genes
    assert genes  # the model has protein genes, so the diagnostic runs
    out = quality.feature_matched_baselines(store, tmp_path / "model", 10, seed=0)
    assert set(out) == {"cca", "ridge"}
    for r in out.values():
        assert r["n_inputs"] == 10 + len(genes)
        assert 0.0 <= r["foscttm"] <= 1.0
        assert not math.isnan(r["recall_at_10"])
