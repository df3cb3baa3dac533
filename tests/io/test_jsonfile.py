"""The one JSON writer: strict JSON (NaN -> null), numpy values, paths; readers with one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from omicsclip.errors import InputError
from omicsclip.io.jsonfile import dumps_json, jsonable, read_json, read_json_object, write_json


def test_write_json_nan_to_null_and_numpy_values(tmp_path):
    obj = {
        "nan": float("nan"), "inf": -math.inf, "np_nan": np.float32("nan"),
        "i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True),
        "arr": np.array([[1, 2], [3, 4]], dtype=np.int32), "farr": np.array([1.5, np.nan]),
        "tuple": (1, "a"), "path": Path("a/b"), 7: "int key",
    }
    out = write_json(tmp_path / "x.json", obj)
    text = out.read_text()
    assert out == tmp_path / "x.json"
    assert text.endswith("}\n")
    assert "NaN" not in text
    assert "Infinity" not in text
    back = json.loads(text)
    assert back == {"nan": None, "inf": None, "np_nan": None, "i": 3, "f": 0.5, "b": True,
                    "arr": [[1, 2], [3, 4]], "farr": [1.5, None], "tuple": [1, "a"], "path": "a/b",
                    "7": "int key"}
    assert type(back["i"]) is int
    assert type(back["b"]) is bool
    assert read_json_object(out) == back


def test_dumps_json_is_what_json_dumps_writes_for_plain_values():
    obj = {"a": [1, 2.5, "x"], "b": {"c": None, "d": True}}
    assert dumps_json(obj) == json.dumps(obj, indent=2) + "\n"
    assert dumps_json(obj, compact=True) == json.dumps(obj)
    assert jsonable(np.arange(3)) == [0, 1, 2]


def test_jsonable_takes_what_a_store_uns_holds():
    """``omicsclip inspect`` passes the store's uns (QC, provenance) through the same converter."""
    uns = {"qc": {"n": np.int64(5), "frac": np.float64("nan")}, "genes": pd.Index(["A", "B"]), "raw": b"x\xff"}
    assert jsonable(uns) == {"qc": {"n": 5, "frac": None}, "genes": ["A", "B"], "raw": "x\ufffd"}


def test_unserialisable_value_is_refused():
    with pytest.raises(TypeError):
        dumps_json({"x": object()})


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.json: cannot read"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        read_json(bad)
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    assert read_json(lst) == [1, 2]
    with pytest.raises(InputError, match="list.json: expected a JSON object, got list"):
        read_json_object(lst)
