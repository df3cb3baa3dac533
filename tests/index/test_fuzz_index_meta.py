"""Fuzz (issue #12): hostile index ``meta.json`` and ``cell_ids.tsv`` under ``omicsclip query``.

A valid model and reference index are built once; per case the index folder is copied and ``meta.json`` gets one
hostile edit (dropped or replaced fields, wrong types, NaN/inf, huge or negative numbers, lists of the wrong
length, names with control characters) or its bytes are damaged at a random offset, or ``cell_ids.tsv`` is (with
its sha256 in ``meta.json`` updated, so the reader itself is exercised). Contract: exit 0 with valid results, or
exit 2 with one line and nothing left behind.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fuzzing import check_contract, invoke, listing
from hypothesis import given
from hypothesis import strategies as st

from omicsclip.io.hashing import sha256_file

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
json_edit, damage_bytes, HOSTILE = _fuzz.json_edit, _fuzz.damage_bytes, _fuzz.HOSTILE


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a flat index of its embedding (protein, labels) and RNA-only cells to query."""
    import anndata as ad

    from omicsclip.config import default_config
    from omicsclip.index.from_embeddings import index_embeddings
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.embed import embed_store

    root = tmp_path_factory.mktemp("fuzz_index")
    store, model = sys.modules["test_modelio_errors"].build_tiny_model(root)
    embed_store(store, model, root / "emb.zarr")
    index_embeddings(root / "emb.zarr", root / "index", {**default_config()["index"], "kind": "flat", "splits": []},
                     store=store, model_dir=model)
    new = make_synthetic(n_cells=20, n_genes=60, n_proteins=5, n_types=3, seed=1).to_anndata()
    ad.AnnData(X=new.X, obs=pd.DataFrame(index=[f"q{i}" for i in range(new.n_obs)]), var=new.var).write_h5ad(
        root / "cells.h5ad")
    return root, json.loads((root / "index" / "meta.json").read_text())


def _run(root: Path, folder: Path, entry: str) -> None:
    out = folder / "res"
    before = listing(folder)
    r = invoke(["query", root / "cells.h5ad", "--model", root / "model", "--index", folder / "index",
                "--out", out, "--k", "3"])
    if check_contract(entry, r, folder, before, [out / "neighbours.parquet", out / "summary.json"]) == 0:
        nb = pd.read_parquet(out / "neighbours.parquet")
        assert set(nb["query_id"]) == {f"q{i}" for i in range(20)}
        from omicsclip.io.tsv import read_tsv

        ids = set(read_tsv(folder / "index" / "cell_ids.tsv", dtype=str)["cell_id"])
        assert set(nb["reference_id"]) <= ids
        assert np.isfinite(nb["similarity"].to_numpy()).all()


@given(data=st.data())
def test_fuzz_index_meta_fields(world, data):
    root, meta = world
    _, doc = data.draw(json_edit(meta), label="edit")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(root / "index", folder / "index")
        (folder / "index" / "meta.json").write_text(json.dumps(doc, allow_nan=True))
        _run(root, folder, "query:meta.json")


@given(data=st.data())
def test_fuzz_index_files_bytes(world, data):
    """Damaged meta.json, or damaged / hostile cell_ids.tsv with its sha256 updated in meta.json."""
    root, meta = world
    name = data.draw(st.sampled_from(["meta.json", "cell_ids.tsv", "cell_ids.tsv-names"]), label="file")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(root / "index", folder / "index")
        if name == "meta.json":
            f = folder / "index" / name
            f.write_bytes(damage_bytes(data, f.read_bytes()))
        else:
            f = folder / "index" / "cell_ids.tsv"
            if name == "cell_ids.tsv":
                f.write_bytes(damage_bytes(data, f.read_bytes()))
            else:  # hostile ids written by hand (not escaped): control characters, quotes, blank lines
                n = meta["n"]
                ids = data.draw(st.lists(HOSTILE, min_size=n, max_size=n, unique=True)
                                | st.lists(HOSTILE, min_size=n - 2, max_size=n + 2), label="ids")
                f.write_text("cell_id\n" + "\n".join(ids) + "\n", encoding="utf-8", errors="surrogatepass")
            files = {**meta["files"], "cell_ids.tsv": sha256_file(f)}
            (folder / "index" / "meta.json").write_text(json.dumps({**meta, "files": files}))
        _run(root, folder, f"query:{name}-bytes" if name == "meta.json" else f"query:{name}")


def test_cell_ids_round_trip_hostile_names(tmp_path):
    """cell_ids.tsv is escaped (io/tsv.py): ids with tabs, newlines, backslashes and quotes come back exactly."""
    from omicsclip.config import default_config
    from omicsclip.index.reference import ReferenceIndex, write_index_dir

    ids = ["a\tb", "line\nbreak", "back\\slash", 'quo"te', "cr\rx", "\x00nul", "ctl\x1b", "plain", "NA", "\\t"]
    x = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_index_dir(tmp_path / "idx", embeddings={"rna": x}, cell_ids=ids, model_fingerprint="m",
                    section=default_config()["index"])
    assert len((tmp_path / "idx" / "cell_ids.tsv").read_text().split("\n")) == len(ids) + 2
    assert list(ReferenceIndex.load(tmp_path / "idx").cell_ids) == ids
