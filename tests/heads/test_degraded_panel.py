"""A protein panel lacking some of the model's proteins: the heads down-weight its protein embedding (issue #12/8).

The protein column of the mask is ``1 - fraction missing`` (``omicsclip.heads.inputs.reliability_mask``): 1 is a
present modality, exactly as before; below 1 the late, gated and uncertainty heads multiply the protein weight by
it; ``predict`` reports the fraction per cell and writes its TSV one line per cell whatever the labels hold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from heads_data import FINETUNE, PROT_C, D, build_head, params, typed, unit, unit_inputs

from omicsclip.errors import InputError
from omicsclip.heads import fit_head, predict_head
from omicsclip.heads.inputs import reliability_mask
from omicsclip.io.tsv import read_tsv

RELIABILITY = (1.0, 0.7, 0.3)  # 0, 3 and 7 of 10 proteins missing


def degraded(t: np.ndarray, missing: float, seed: int) -> np.ndarray:
    """Protein embeddings of cells of types ``t`` from a panel lacking ``missing`` of its proteins.

    Losing markers moves a cell towards another type's embedding (still cell-like, which is why the gate alone
    does not notice it, as on real data: bench/degraded_panel.py).
    """
    rng = np.random.default_rng(seed)
    other = (t + rng.integers(1, 4, len(t))) % 4
    return unit((1 - missing) * PROT_C[t] + 1.2 * missing * PROT_C[other] + 0.12 * rng.normal(size=(len(t), D)))


@pytest.mark.parametrize("fusion", ["late", "gated", "uncertainty"])
def test_soft_mask_scales_the_protein_weight_and_keeps_the_limits(fusion):
    torch.manual_seed(0)
    head = build_head(fusion, 6, 5, 4, members=3)
    zr, zp = (z.numpy() for z in unit_inputs(12))
    ones = np.ones((12, 2), np.float32)
    base = predict_head(head, zr, zp, mask=ones, mc_samples=3, seed=0)
    same = predict_head(head, zr, zp, mask=reliability_mask(ones, np.zeros(12)), mc_samples=3, seed=0)
    for key in ("probs", "weights"):  # weight 1: exactly as a present modality
        np.testing.assert_array_equal(same[key], base[key])
    for r in (0.7, 0.3):
        w = predict_head(head, zr, zp, mask=reliability_mask(ones, np.full(12, 1 - r)), mc_samples=3,
                         seed=0)["weights"]
        # the protein weight's odds are multiplied by the reliability
        np.testing.assert_allclose(w[:, 1] / w[:, 0], r * base["weights"][:, 1] / base["weights"][:, 0], rtol=1e-4)
    absent = ones.copy()
    absent[:, 1] = 0
    gone = predict_head(head, zr, zp, mask=absent, mc_samples=3, seed=0)
    tiny = predict_head(head, zr, zp, mask=reliability_mask(ones, np.full(12, 1 - 1e-7)), mc_samples=3, seed=0)
    np.testing.assert_allclose(tiny["weights"], gone["weights"], atol=1e-5)  # the limit 0: absent
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        reliability_mask(ones, np.full(12, 1.5))


def test_degraded_panel_shifts_weight_to_rna_without_losing_accuracy():
    """Mean protein weight and accuracy for 0, 3, 7 of 10 proteins missing: hard mask (before) vs soft (now)."""
    zr, zp, t = typed(300, 0)
    pool = typed(300, 5)[:2]
    heads = {f: fit_head(zr, zp, t, 4, params(fusion=f, epochs=80), unlabelled=pool) for f in ("gated", "uncertainty")}
    zr_test, _, t_test = typed(300, 1)
    hard = np.ones((300, 2), np.float32)
    for fusion, head in heads.items():
        weights, acc = {"old": [], "new": []}, {"old": [], "new": []}
        for r in RELIABILITY:
            zp_test = degraded(t_test, 1 - r, seed=2)
            for v, mask in (("old", hard), ("new", reliability_mask(hard, np.full(300, 1 - r)))):
                pred = predict_head(head, zr_test, zp_test, mask=mask, mc_samples=5, seed=0)
                weights[v].append(float(pred["weights"][:, 1].mean()))
                acc[v].append(float((pred["probs"].argmax(1) == t_test).mean()))
        print(fusion, "protein weight (0/3/7 missing) old", np.round(weights["old"], 3), "new",
              np.round(weights["new"], 3), "accuracy old", acc["old"], "new", acc["new"])
        assert weights["new"][0] == weights["old"][0]
        assert acc["new"][0] == acc["old"][0]
        assert weights["new"][0] > weights["new"][1] > weights["new"][2]
        assert all(n < o for n, o in zip(weights["new"][1:], weights["old"][1:], strict=True))
        assert all(n >= o for n, o in zip(acc["new"], acc["old"], strict=True))
        assert acc["new"][2] > acc["old"][2]  # 7 of 10 missing: the protein guess no longer overrides RNA


# ------------------------------------------------------------------------------------- embed -> finetune -> predict


def hostile(name: str) -> str:
    """A cell-type label with a tab, a newline, a backslash, a quote and a carriage return."""
    return name.replace(" ", "\t") + '\r\nsub "x" \\t end'  # inside: labels are read stripped


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An untrained (seeded) 10-protein model, the embeddings of its store (hostile labels) and a gated head."""
    from omicsclip.config import load_config
    from omicsclip.heads import finetune_embedding
    from omicsclip.io.split import make_split, write_split
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.embed import embed_store
    from omicsclip.model.encoders import build_model
    from omicsclip.model.modelio import write_model_files
    from omicsclip.model.preprocess import fit_preprocessing

    root = tmp_path_factory.mktemp("degraded")
    data = make_synthetic(n_cells=200, n_genes=60, n_proteins=10, n_types=4, seed=0)
    types = data.obs["cell_type"].astype(str)
    data.obs["cell_type"] = types.map(hostile).to_numpy()
    cfg = load_config(None, ["model.rna_hidden=[16]", "model.prot_hidden=[8]", "model.embed_dim=8"])
    plain = {**{k: v for k, v in cfg["preprocess"].items() if k != "genes"}, "n_hvg": 0, "n_pcs": 0, "protein_genes": 0, "depth_features": False}
    state = fit_preprocessing(data.rna, data.prot, data.gene_names, data.protein_names, **plain)
    torch.manual_seed(0)
    model = build_model(len(state.genes), len(state.proteins), cfg["model"], cfg["train"])
    (root / "model").mkdir()
    write_model_files(root / "model", model, state, cfg, {})
    write_split(make_split(data.obs, seed=0), root / "model" / "split.tsv")
    write_store(data, root / "store.zarr")
    embed_store(root / "store.zarr", root / "model", root / "emb.zarr")
    finetune_embedding(root / "emb.zarr", root / "head", label_key="cell_type",
                       section={**FINETUNE, "fusion": "gated", "epochs": 20, "ensemble": 2, "mc_samples": 2})
    return root, data


def make_types() -> list[str]:
    from omicsclip.io.synthetic import make_synthetic

    return sorted(make_synthetic(n_cells=200, n_genes=60, n_proteins=10, n_types=4, seed=0).obs["cell_type"].unique())


def _h5ad(data, keep, path):
    from omicsclip.io.paired import PairedData

    part = PairedData(rna=data.rna, prot=data.prot[:, keep], obs=data.obs, genes=data.genes,
                      proteins=data.proteins.iloc[keep])
    part.to_anndata().write_h5ad(path)
    return path


def test_predict_reports_the_missing_fraction_and_escapes_labels(world, tmp_path):
    from omicsclip.heads import predict_cells

    root, data = world
    out = {}
    for name, keep in (("full", list(range(10))), ("part", [0, 1, 2, 4, 5, 6, 7, 9])):
        path = _h5ad(data, keep, tmp_path / f"{name}.h5ad")
        predict_cells([path], root / "model", root / "head", tmp_path / f"{name}.tsv", chunk_cells=64)
        lines = (tmp_path / f"{name}.tsv").read_text().split("\n")
        assert len(lines) == data.n_cells + 2
        assert lines[-1] == ""
        out[name] = read_tsv(tmp_path / f"{name}.tsv")
    labels = {hostile(str(t)) for t in make_types()}
    assert set(out["full"]["label"]) <= labels
    assert len(set(out["full"]["label"])) > 1
    assert (out["full"]["prot_missing_fraction"] == 0).all()
    np.testing.assert_allclose(out["part"]["prot_missing_fraction"], 0.2, rtol=1e-6)
    assert (out["part"]["has_prot"] == 1).all()
    with pytest.raises(InputError, match="max_missing_protein_fraction"):
        predict_cells([_h5ad(data, [0, 1, 2], tmp_path / "few.h5ad")], root / "model", root / "head",
                      tmp_path / "few.tsv", chunk_cells=64)
    assert not (tmp_path / "few.tsv").exists()


def test_read_embedding_weighs_the_protein_column(world, tmp_path):
    from omicsclip.heads import read_embedding
    from omicsclip.io.store import write_store
    from omicsclip.model.embed import embed_store

    root, data = world
    from omicsclip.io.paired import PairedData

    keep = [0, 1, 2, 4, 5, 6, 7, 9]
    write_store(PairedData(rna=data.rna, prot=data.prot[:, keep], obs=data.obs, genes=data.genes,
                           proteins=data.proteins.iloc[keep]), tmp_path / "part.zarr")
    embed_store(tmp_path / "part.zarr", root / "model", tmp_path / "part_emb.zarr")
    emb = read_embedding(tmp_path / "part_emb.zarr")
    np.testing.assert_allclose(emb.prot_missing, 0.2, rtol=1e-6)
    np.testing.assert_allclose(emb.mask, np.tile([1.0, 0.8], (data.n_cells, 1)), rtol=1e-6)
    assert (read_embedding(root / "emb.zarr").mask == 1).all()
    assert isinstance(emb.obs, pd.DataFrame)
