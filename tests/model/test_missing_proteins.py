"""Protein inputs lacking part of the model's panel (issue #12 case 8).

Past ``preprocess.max_missing_protein_fraction`` they are refused (one-line InputError, exit 2 from the CLI) as
too many missing genes are; below it the fraction missing is recorded per cell (obs column of ``embed``).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from omicsclip.cli.main import app
from omicsclip.config import default_config, load_config
from omicsclip.errors import InputError
from omicsclip.io.paired import PairedData
from omicsclip.io.split import make_split, write_split
from omicsclip.io.store import write_store
from omicsclip.io.synthetic import make_synthetic
from omicsclip.model.alignment import align_proteins, protein_missing_fraction
from omicsclip.model.embed import PROT_MISSING_COLUMN, embed_store, open_embeddings
from omicsclip.model.encoders import build_model
from omicsclip.model.modelio import load_model, write_model_files
from omicsclip.model.preprocess import PreprocessState, fit_preprocessing

LIMIT = default_config()["preprocess"]["max_missing_protein_fraction"]


def panel(data: PairedData, keep: list[int]) -> PairedData:
    """``data`` with only the proteins ``keep`` (a smaller antibody panel)."""
    return PairedData(rna=data.rna, prot=data.prot[:, keep], obs=data.obs, genes=data.genes,
                      proteins=data.proteins.iloc[keep])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An untrained (seeded) model over 10 proteins, saved like `omicsclip train`, and its data."""
    root = tmp_path_factory.mktemp("missing_proteins")
    data = make_synthetic(n_cells=120, n_genes=60, n_proteins=10, n_types=4, seed=0)
    cfg = load_config(None, ["model.rna_hidden=[16]", "model.prot_hidden=[8]", "model.embed_dim=8"])
    plain = {**{k: v for k, v in cfg["preprocess"].items() if k != "genes"}, "n_hvg": 0, "n_pcs": 0, "protein_genes": 0, "depth_features": False}
    state = fit_preprocessing(data.rna, data.prot, data.gene_names, data.protein_names, **plain)
    torch.manual_seed(0)
    model = build_model(len(state.genes), len(state.proteins), cfg["model"], cfg["train"])
    (root / "model").mkdir()
    write_model_files(root / "model", model, state, cfg, {})
    write_split(make_split(data.obs, seed=0), root / "model" / "split.tsv")
    return root, data, state


def test_limit_comes_from_the_config_and_is_saved(world):
    _, _, state = world
    assert state.max_missing_protein_fraction == LIMIT
    back = PreprocessState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back.max_missing_protein_fraction == LIMIT


def test_state_of_an_older_model_takes_the_default_limit_with_a_warning(world, caplog):
    _, _, state = world
    old = state.to_dict()
    del old["max_missing_protein_fraction"]
    with caplog.at_level(logging.WARNING):
        back = PreprocessState.from_dict(old)
    assert back.max_missing_protein_fraction == LIMIT
    assert "max_missing_protein_fraction" in caplog.text


def test_align_proteins_refuses_past_the_limit(world):
    _, data, state = world
    keep = [0, 1, 2]  # 7 of 10 missing
    with pytest.raises(InputError) as err:
        align_proteins(data.prot[:, keep], [data.protein_names[i] for i in keep], state)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"protein input lacks 7 of the model's 10 proteins (70% > max_missing_protein_fraction="
                          f"{LIMIT:g}); e.g. {', '.join(data.protein_names[3:6])}")
    n_ok = int(np.floor(LIMIT * 10 + 1e-9))  # exactly at the limit is accepted
    keep = list(range(n_ok, 10))
    counts, present, report = align_proteins(data.prot[:, keep], [data.protein_names[i] for i in keep], state)
    assert report.n_missing == n_ok
    assert not present[:n_ok].any()
    assert (counts[:, :n_ok] == 0).all()
    np.testing.assert_allclose(protein_missing_fraction(report, 4), n_ok / 10)
    np.testing.assert_allclose(protein_missing_fraction(report.to_dict(), 4), n_ok / 10)
    assert (protein_missing_fraction(None, 3) == 1).all()


def test_embed_records_the_missing_fraction_per_cell(world, tmp_path):
    root, data, _ = world
    keep = [0, 1, 2, 4, 5, 6, 7, 9]  # 2 of 10 missing
    write_store(panel(data, keep), tmp_path / "part.zarr")
    embed_store(tmp_path / "part.zarr", root / "model", tmp_path / "part_emb.zarr")
    emb = open_embeddings(tmp_path / "part_emb.zarr")
    np.testing.assert_allclose(emb.obs[PROT_MISSING_COLUMN].to_numpy(), 0.2, rtol=1e-6)
    np.testing.assert_allclose(emb.prot_missing_fraction(), 0.2, rtol=1e-6)
    write_store(data, tmp_path / "full.zarr")
    embed_store(tmp_path / "full.zarr", root / "model", tmp_path / "full_emb.zarr")
    assert (open_embeddings(tmp_path / "full_emb.zarr").prot_missing_fraction() == 0).all()


def test_files_without_the_column(world, tmp_path):
    """An older embeddings file: the panel's fraction from its feature report; a foreign one: 0; bad values: refused."""
    root, data, _ = world
    write_store(panel(data, [0, 1, 2, 4, 5, 6, 7, 9]), tmp_path / "part.zarr")
    embed_store(tmp_path / "part.zarr", root / "model", tmp_path / "emb.zarr")
    emb = open_embeddings(tmp_path / "emb.zarr")
    emb.obs = emb.obs.drop(columns=[PROT_MISSING_COLUMN])
    np.testing.assert_allclose(emb.prot_missing_fraction(), 0.2, rtol=1e-6)
    emb.uns = {}
    assert (emb.prot_missing_fraction() == 0).all()
    emb.obs[PROT_MISSING_COLUMN] = 1.5
    with pytest.raises(InputError, match="outside"):
        emb.prot_missing_fraction()


def test_model_embed_and_cli_refuse_a_panel_missing_too_much(world, tmp_path):
    root, data, _ = world
    keep = [0, 1, 2]
    with pytest.raises(InputError, match="max_missing_protein_fraction"):
        load_model(root / "model").embed(prot=data.prot[:, keep], proteins=[data.protein_names[i] for i in keep])
    write_store(panel(data, keep), tmp_path / "few.zarr")
    res = CliRunner().invoke(app, ["embed", str(tmp_path / "few.zarr"), "--model", str(root / "model"),
                                   "--out", str(tmp_path / "emb.zarr")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "lacks 7 of the model's 10 proteins" in lines[0]
    assert "max_missing_protein_fraction" in lines[0]
    assert not (tmp_path / "emb.zarr").exists()
