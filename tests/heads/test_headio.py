"""Head folders: save/load round trip (head.safetensors + head.json), refusals, model fingerprints."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from heads_data import params, typed

from omicsclip.errors import InputError
from omicsclip.heads import HeadParams, check_fingerprint, fit_head, load_head, predict_head, save_head


@pytest.mark.parametrize("fusion", ["early", "gated", "uncertainty", "tensor", "rna"])
def test_save_load_round_trip(tmp_path, fusion):
    tr, te = typed(40, 51), typed(50, 52)
    hp = params(fusion=fusion, head="mlp", hidden=8, epochs=10, ensemble=3)
    head = fit_head(tr[0], tr[1], tr[2], 4, hp)
    meta = {"params": asdict(hp), "classes": list("abcd"), "model_fingerprint": "fp1"}
    save_head(tmp_path / "h", head, meta)
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head.json", "head.safetensors"]
    loaded, meta2, extra = load_head(tmp_path / "h")
    assert meta2["classes"] == list("abcd")
    assert meta2["architecture"]["fusion"] == fusion
    assert extra == {}
    # head.json is strict JSON written by the one writer, and its params rebuild the same hyper-parameters
    text = (tmp_path / "h" / "head.json").read_text()
    assert json.loads(text) == meta2
    assert text.endswith("}\n")
    assert "NaN" not in text
    assert HeadParams.from_section(meta2["params"]) == hp
    a = predict_head(head, te[0], te[1], mc_samples=4, seed=3)
    b = predict_head(loaded, te[0], te[1], mc_samples=4, seed=3)
    for k in ("probs", "weights", "uncertainty"):
        assert np.allclose(a[k], b[k], equal_nan=True, atol=1e-6), k
    with pytest.raises(InputError, match="already exists"):
        save_head(tmp_path / "h", head, meta)


def test_load_head_refuses_bad_folders(tmp_path):
    with pytest.raises(InputError, match="not a head folder"):
        load_head(tmp_path)
    (tmp_path / "head.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "head.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="not an omicsclip head"):
        load_head(tmp_path)


def test_head_saved_before_calibration_loads_uncalibrated(tmp_path):
    from safetensors.torch import load_file, save_file

    tr = typed(40, 53)
    hp = params(fusion="gated", hidden=8, epochs=5, ensemble=3)
    meta = {"params": asdict(hp), "classes": list("abcd"), "model_fingerprint": "fp1"}
    save_head(tmp_path / "h", fit_head(tr[0], tr[1], tr[2], 4, hp), meta)
    w = tmp_path / "h" / "head.safetensors"
    tensors = load_file(str(w))
    del tensors["head.beta"]  # what an older omicsclip wrote
    save_file(tensors, str(w))
    loaded, _, _ = load_head(tmp_path / "h")
    assert float(loaded.beta) == 1.0


def test_head_json_missing_a_param_is_refused(tmp_path):
    """No code fallback for a head's params: a head.json without one is an invalid head description."""
    tr = typed(20, 54)
    hp = params(fusion="late", epochs=2)
    save_head(tmp_path / "h", fit_head(tr[0], tr[1], tr[2], 4, hp),
              {"params": asdict(hp), "classes": list("abcd"), "model_fingerprint": "fp1"})
    meta = json.loads((tmp_path / "h" / "head.json").read_text())
    del meta["params"]["mc_samples"]
    (tmp_path / "h" / "head.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="invalid head description.*mc_samples"):
        load_head(tmp_path / "h")


def test_fingerprint_must_match():
    check_fingerprint({"model_fingerprint": "abc"}, "abc", head_dir="h")
    with pytest.raises(InputError, match="trained on embeddings of model abc"):
        check_fingerprint({"model_fingerprint": "abc"}, "xyz", head_dir="h")
    with pytest.raises(InputError, match="no model_fingerprint"):
        check_fingerprint({}, "xyz", head_dir="h")

