"""bench/val_sweep.py: held-out scoring outside the bars' split (``--held-out-outside``)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from conftest import REPO, pooled_two_labs


@pytest.fixture(scope="module")
def val_sweep():
    sys.path.insert(0, str(REPO / "bench"))
    return importlib.import_module("val_sweep")


def test_held_out_cells_stay_outside_the_bars_test_split(tmp_path, val_sweep):
    from omicsclip.config import load_config
    from omicsclip.io.split import read_split
    from omicsclip.io.store import read_store
    from omicsclip.train.run import train_model

    store, a, b = pooled_two_labs(tmp_path, n=300)
    cfg = load_config(None, ["split.seed=1", "train.seed=1", "train.epochs=2", "train.batch_size=64",
                             "model.members=1", "train.device=cpu"])
    model = train_model(store, tmp_path / "m", cfg)
    data = read_store(store)
    bar = val_sweep.bar_test_cells(data, 0)
    assert bar.sum() == pytest.approx(0.2 * 600, abs=4)  # each lab's own 20 % test split of seed 0
    subsets = val_sweep.dataset_subsets(store, data)
    val, held = val_sweep.dataset_foscttm(store, model, subsets, bar)
    split = read_split(model / "split.tsv")
    for lab in ("labA", "labB"):
        cells = split.index[(split == "test") & ~bar.reindex(split.index).to_numpy(dtype=bool)]
        in_lab = data.obs.index[data.obs["dataset"].astype(str) == lab]
        assert held[f"{lab}_cells"] == len(cells.intersection(in_lab)) > 0
        assert 0 <= held[lab] <= 1
    # the same run scored on its validation cells: other cells, other numbers (and the same without bar_test)
    assert set(val) == {"labA", "labB"}
    assert val_sweep.dataset_foscttm(store, model, subsets) == (val, None)
    assert not np.allclose([val["labA"], val["labB"]], [held["labA"], held["labB"]])


def test_wrong_arguments_are_one_line_errors(tmp_path):
    import subprocess

    script = str(REPO / "bench" / "val_sweep.py")
    for args, msg in ((["x.zarr", "--seeds", "1,x", "--config", "a="], "expected comma-separated integers"),
                      ([str(tmp_path / "none.zarr"), "--config", "a="], "no such store")):
        r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2
        assert msg in r.stderr
        assert "Traceback" not in r.stderr
