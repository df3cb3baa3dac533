"""Fuzz (issue #12): hostile ``model.json`` (and ``model.safetensors``) under ``omicsclip embed``.

Per case a valid model folder is copied and one field of ``model.json`` is dropped or replaced (random JSON, wrong
types, NaN/inf, huge or negative numbers, lists of the wrong length, names with control characters), or the file
is truncated / overwritten with random bytes at a random offset, or the weights are (with a matching fingerprint).
Contract: exit 0 with valid embeddings, or exit 2 with one line and nothing left behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from fuzzing import check_contract, invoke, listing
from hypothesis import given
from hypothesis import strategies as st
from test_modelio_errors import build_tiny_model

from omicsclip.io.hashing import sha256_file

pytestmark = pytest.mark.fuzz

HOSTILE = st.text(st.characters(min_codepoint=0, max_codepoint=0x7FF, exclude_categories=("Cs",)), max_size=12)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | HOSTILE
           | st.sampled_from([0, -1, 1, 2**31, 2**63, 1e308, -1e308, float("nan"), float("inf"), "", "nan"]))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(HOSTILE, c, max_size=3), max_leaves=6)


def paths(doc, prefix=()):
    """Every key path in ``doc`` (dicts and lists), parents before children."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths(v, (*prefix, k)))
    return out


@st.composite
def json_edit(draw, doc):
    """``(description, new document)``: one hostile edit of a JSON document."""
    doc = json.loads(json.dumps(doc))
    path = draw(st.sampled_from(paths(doc)))
    *head, last = path
    parent = doc
    for k in head:
        parent = parent[k]
    old = parent[last]
    ops = ["drop", "random", "wrong_type", "number", "text"]
    if isinstance(old, list):
        ops += ["shorter", "longer", "duplicate"]
    op = draw(st.sampled_from(ops))
    if op == "drop":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif op == "random":
        parent[last] = draw(JSON)
    elif op == "wrong_type":
        parent[last] = draw(st.sampled_from([str(old), [old], {"x": old}, None, True]))
    elif op == "number":
        parent[last] = draw(st.sampled_from([float("nan"), float("inf"), -1, 0, 10**18, -(10**18), 1e-300, 0.5]))
    elif op == "text":
        parent[last] = draw(HOSTILE)
    elif op == "shorter":
        del old[draw(st.integers(0, max(len(old) - 1, 0))):]
    elif op == "longer":
        old.extend([old[-1] if old else 0] * draw(st.integers(1, 3)))
    else:
        if old:
            old.append(old[draw(st.integers(0, len(old) - 1))])
    return f"{op} {'.'.join(map(str, path))}", doc


def damage_bytes(data, raw: bytes) -> bytes:
    """Truncate ``raw`` at a random offset, or overwrite random bytes there."""
    at = data.draw(st.integers(0, len(raw)), label="offset")
    if data.draw(st.booleans(), label="truncate"):
        return raw[:at]
    return raw[:at] + data.draw(st.binary(min_size=1, max_size=16), label="bytes") + raw[at + 1:]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    store, model = build_tiny_model(tmp_path_factory.mktemp("fuzz_model"))
    return store, model, json.loads((model / "model.json").read_text())


def _run(store: Path, folder: Path, entry: str) -> None:
    out = folder / "emb.zarr"
    before = listing(folder)
    r = invoke(["embed", store, "--model", folder / "model", "--out", out])
    if check_contract(entry, r, folder, before, [out]) == 0:
        a = ad.read_zarr(out)
        for key in ("X_omicsclip_rna", "X_omicsclip_prot", "X_omicsclip_joint"):
            z = np.asarray(a.obsm[key])
            assert z.shape[0] == a.n_obs > 0
            assert np.isfinite(z).all(), f"{entry}: exit 0 with non-finite {key}"
        assert np.allclose(np.linalg.norm(a.obsm["X_omicsclip_joint"], axis=1), 1, atol=1e-3)


@given(data=st.data())
def test_fuzz_model_json_fields(tiny, data):
    store, model, meta = tiny
    what, doc = data.draw(json_edit(meta), label="edit")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(model, folder / "model")
        (folder / "model" / "model.json").write_text(json.dumps(doc, allow_nan=True))
        _run(store, folder, "embed:model.json")


@given(data=st.data())
def test_fuzz_model_json_bytes(tiny, data):
    store, model, _ = tiny
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(model, folder / "model")
        f = folder / "model" / "model.json"
        f.write_bytes(damage_bytes(data, f.read_bytes()))
        _run(store, folder, "embed:model.json-bytes")


@given(data=st.data())
def test_fuzz_model_weights_bytes(tiny, data):
    """Damaged weights whose fingerprint was updated too: read, not refused by the fingerprint check."""
    store, model, meta = tiny
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(model, folder / "model")
        w = folder / "model" / "model.safetensors"
        w.write_bytes(damage_bytes(data, w.read_bytes()))
        (folder / "model" / "model.json").write_text(json.dumps({**meta, "model_fingerprint": sha256_file(w)}))
        _run(store, folder, "embed:model.safetensors")


def test_split_round_trips_hostile_barcodes(tmp_path):
    """split.tsv (io/split.py) is escaped: barcodes with tabs, newlines, backslashes and quotes come back exactly."""
    import pandas as pd

    from omicsclip.io.split import read_split, write_split

    barcodes = ["a\tb", "line\nbreak", "back\\slash", 'quo"te', "cr\rx", "\x00nul", "ctl\x1b", "plain", "NA", " "]
    split = pd.Series(["train", "val", "test"] * 3 + ["train"], index=barcodes, name="split")
    write_split(split, tmp_path / "split.tsv")
    assert len((tmp_path / "split.tsv").read_text().split("\n")) == len(barcodes) + 2  # header, rows, final ""
    back = read_split(tmp_path / "split.tsv")
    assert list(back.index) == barcodes
    assert list(back) == list(split)
