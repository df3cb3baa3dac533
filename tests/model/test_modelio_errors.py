"""Issue #12 cases 6-7: a model folder whose files are damaged or disagree is refused in one line naming the file
and the key (exit 2), before anything is built from it."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY
from fuzzing import invoke

from omicsclip.errors import InputError
from omicsclip.io.hashing import sha256_file
from omicsclip.model.modelio import load_model, read_meta


def build_tiny_model(root: Path, n_cells: int = 120) -> tuple[Path, Path]:
    """A small store and an untrained, seeded model saved like ``omicsclip train`` (PCs, protein genes, depth).

    Returns ``(store, model_dir)``; no training, so it takes about a second.
    """
    from omicsclip.config import load_config
    from omicsclip.io.split import make_split, write_split
    from omicsclip.io.store import write_store
    from omicsclip.io.synthetic import make_synthetic
    from omicsclip.model.encoders import build_model
    from omicsclip.model.modelio import write_model_files
    from omicsclip.model.preprocess import TorchPreprocessor, fit_preprocessing

    data = make_synthetic(n_cells=n_cells, n_genes=60, n_proteins=5, n_types=3, seed=0)
    write_store(data, root / "store.zarr")
    split = make_split(data.obs, seed=0)
    tr = (split == "train").to_numpy()
    cfg = load_config(None, [*TINY, "model.members=2"])
    section = {**cfg["preprocess"], "n_hvg": 0, "n_pcs": 6, "protein_genes": 2, "depth_features": True}
    accepted = inspect.signature(fit_preprocessing).parameters
    state = fit_preprocessing(data.rna[tr], data.prot[tr], data.gene_names, data.protein_names,
                              **{k: v for k, v in section.items() if k in accepted and k != "genes"})
    pre = TorchPreprocessor(state)
    torch.manual_seed(0)
    model = build_model(pre.rna_dim, pre.prot_dim, cfg["model"], cfg["train"])
    (root / "model").mkdir()
    write_model_files(root / "model", model, state, cfg, {})
    write_split(split, root / "model" / "split.tsv")
    return root / "store.zarr", root / "model"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("modelio_errors"))


def _copy(tiny, tmp_path: Path, edit=None) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny[1], model)
    if edit is not None:
        meta = json.loads((model / "model.json").read_text())
        edit(meta)
        (model / "model.json").write_text(json.dumps(meta))
    return model


def _refused(tiny, model: Path, tmp_path: Path, *needles: str) -> str:
    """``omicsclip embed`` with ``model``: exit 2, one line naming what is wrong, no output left."""
    out = tmp_path / "emb.zarr"
    r = invoke(["embed", tiny[0], "--model", model, "--out", out])
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.exception)
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("omicsclip: error: ")
    for n in needles:
        assert n in r.stderr, r.stderr
    assert "weights_only" not in r.stderr
    assert not out.exists()
    return r.stderr


def test_valid_model_loads(tiny):
    m = load_model(tiny[1])
    assert len(m.genes) == 60


def test_stat_length_disagrees_with_genes(tiny, tmp_path):
    """The reported case: rna_mean of 295 values for 300 genes gave a RuntimeError from torch (exit 1)."""
    model = _copy(tiny, tmp_path, lambda m: m["preprocessing"].update(rna_mean=m["preprocessing"]["rna_mean"][:-5]))
    with pytest.raises(InputError, match=r"model.json: preprocessing.rna_mean has 55 values for 60 genes"):
        load_model(model)
    _refused(tiny, model, tmp_path, "model.json", "preprocessing.rna_mean has 55 values for 60 genes")


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda m: m["preprocessing"].update(target_sum="1e4"), "preprocessing.target_sum must be a finite number"),
    (lambda m: m["preprocessing"].update(prot_std=[1.0, 0.0, 1.0, 1.0, 1.0]), "preprocessing.prot_std[1]"),
    (lambda m: m["preprocessing"].update(rna_std=[float("nan")] * 60), "preprocessing.rna_std[0]"),
    (lambda m: m["preprocessing"]["genes"].__setitem__(1, m["preprocessing"]["genes"][0]),
     "preprocessing.genes lists"),
    (lambda m: m["preprocessing"].update(proteins=m["preprocessing"]["proteins"][:4]),
     "preprocessing.prot_mean has 5 values for 4 proteins"),
    (lambda m: m["preprocessing"]["rna_pcs"][2].pop(), "preprocessing.rna_pcs[2] has 59 values for 60 genes"),
    (lambda m: m["preprocessing"].update(protein_genes=["nope"]), "preprocessing.protein_genes"),
    (lambda m: m["preprocessing"].update(depth=[1.0, 2.0]), "preprocessing.depth has 2 values"),
    (lambda m: m["preprocessing"].pop("rna_mean"), "preprocessing.rna_mean is missing"),
    (lambda m: m["architecture"].update(n_rna_inputs=7), "architecture.n_rna_inputs is 7"),
    (lambda m: m["architecture"].update(n_prot_inputs="6"), "architecture.n_prot_inputs must be an integer"),
    (lambda m: m["config"]["model"].update(members=-1), "config.model.members"),
    (lambda m: m["config"]["model"].update(rna_hidden=[10**12] * 100), "config.model.rna_hidden"),
    (lambda m: m["config"]["train"].update(temperature=None), "config.train.temperature"),
    (lambda m: m["config"].pop("preprocess"), "config.preprocess is missing"),
    (lambda m: m.update(model_fingerprint=7), "model_fingerprint must be a non-empty string"),
])
def test_inconsistent_model_json_is_one_line_naming_the_key(tiny, tmp_path, edit, needle):
    model = _copy(tiny, tmp_path, edit)
    with pytest.raises(InputError) as err:
        read_meta(model)
    assert str(err.value).startswith(f"{model / 'model.json'}: ")
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
    _refused(tiny, model, tmp_path, needle)


def test_architecture_not_fitting_weights_is_one_line(tiny, tmp_path):
    """Was up to 13 lines of state-dict mismatches."""
    model = _copy(tiny, tmp_path, lambda m: m["config"]["model"].update(rna_hidden=[64, 16], embed_dim=4))
    msg = _refused(tiny, model, tmp_path, "model.json: architecture does not match model.safetensors (",
                   "missing", "unexpected", "shape mismatch", "e.g. ")
    assert str(model / "model.json") in msg


def test_truncated_or_garbage_weights_are_one_line(tiny, tmp_path):
    model = _copy(tiny, tmp_path)
    w = model / "model.safetensors"
    for content in (w.read_bytes()[:300], b"\x00\x01garbage" * 10, b""):
        w.write_bytes(content)
        meta = json.loads((model / "model.json").read_text())
        meta["model_fingerprint"] = sha256_file(w)  # so the file itself is read (not refused by fingerprint)
        (model / "model.json").write_text(json.dumps(meta))
        _refused(tiny, model, tmp_path, "model.safetensors: not a readable safetensors file")


def test_replaced_weights_are_refused_by_fingerprint(tiny, tmp_path):
    model = _copy(tiny, tmp_path)
    (model / "model.safetensors").write_bytes(b"x" * 100)
    _refused(tiny, model, tmp_path, "do not match the fingerprint")
