"""Fuzz (issue #12): hostile ``head.json`` (and ``head.safetensors``) under ``omicsclip predict``.

A valid model and head are built once; per case the head folder is copied and ``head.json`` gets one hostile edit
(dropped or replaced fields, wrong types, NaN/inf, huge or negative numbers, lists of the wrong length, names with
control characters) or its bytes are truncated / overwritten at a random offset, or the weights are.
Contract: exit 0 with one valid prediction per cell, or exit 2 with one line and nothing left behind.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from fuzzing import check_contract, invoke, listing
from hypothesis import given
from hypothesis import strategies as st

from omicsclip.io.tsv import read_tsv

pytestmark = pytest.mark.fuzz


def _sibling(name: str):
    """Import ``tests/model/<name>.py``: the tiny model builder and the JSON edit strategies are shared."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "model" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_sibling("test_modelio_errors")
_fuzz = _sibling("test_fuzz_model_json")
json_edit, damage_bytes = _fuzz.json_edit, _fuzz.damage_bytes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, its embedding, an uncertainty head (MC dropout, ensemble) and cells to predict."""
    from heads_data import FINETUNE

    from omicsclip.heads.run import finetune_embedding
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.embed import embed_store

    root = tmp_path_factory.mktemp("fuzz_head")
    store, model = sys.modules["test_modelio_errors"].build_tiny_model(root)
    embed_store(store, model, root / "emb.zarr")
    finetune_embedding(root / "emb.zarr", root / "head", label_key="cell_type",
                       section={**FINETUNE, "fusion": "uncertainty", "epochs": 5, "ensemble": 2, "mc_samples": 3})
    cells = make_synthetic(n_cells=30, n_genes=60, n_proteins=5, n_types=3, seed=1).to_anndata()
    cells.write_h5ad(root / "cells.h5ad")
    return root, json.loads((root / "head" / "head.json").read_text())


def _run(root: Path, folder: Path, entry: str) -> None:
    out = folder / "p.tsv"
    before = listing(folder)
    r = invoke(["predict", root / "cells.h5ad", "--model", root / "model", "--head", folder / "head", "--out", out])
    if check_contract(entry, r, folder, before, [out]) == 0:
        df = read_tsv(out, dtype={"barcode": str, "label": str})
        assert len(df) == 30
        classes = json.loads((folder / "head" / "head.json").read_text())["classes"]
        assert set(df["label"]) <= set(classes)
        assert df["probability"].between(0, 1).all()


@given(data=st.data())
def test_fuzz_head_json_fields(world, data):
    root, meta = world
    _, doc = data.draw(json_edit(meta), label="edit")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(root / "head", folder / "head")
        (folder / "head" / "head.json").write_text(json.dumps(doc, allow_nan=True))
        _run(root, folder, "predict:head.json")


@given(data=st.data())
def test_fuzz_head_files_bytes(world, data):
    root, _ = world
    name = data.draw(st.sampled_from(["head.json", "head.safetensors"]), label="file")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(root / "head", folder / "head")
        f = folder / "head" / name
        f.write_bytes(damage_bytes(data, f.read_bytes()))
        _run(root, folder, f"predict:{name}-bytes")
