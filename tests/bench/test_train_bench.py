"""bench/train.py's omicsclip side: per-epoch rates, including the cells the steps actually saw."""

from __future__ import annotations

import json

import pytest
from conftest import load_bench, tiny_store


def test_run_omicsclip_reports_cells_in_full_batches(tmp_path):
    train = load_bench("train")
    store = tiny_store(tmp_path / "s.zarr", n_cells=900, n_genes=120, n_proteins=6)
    res, barcodes = train.run_omicsclip(store, tmp_path / "model", epochs=3, seed=0, threads=1)
    n_train = res["n_train_cells"]
    assert n_train == len(barcodes) > res["batch_size"]
    # an epoch drops the last partial batch: only whole batches count as processed
    assert res["cells_per_epoch_processed"] == n_train // res["batch_size"] * res["batch_size"] < n_train
    assert res["epochs_run"] == 3
    log = (tmp_path / "model" / "train_log.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log]  # cumulative optimiser steps at each epoch's end
    assert (steps[1] - steps[0]) * res["batch_size"] == res["cells_per_epoch_processed"]
    assert res["cells_processed_per_s_epoch"] == pytest.approx(
        res["cells_per_s_epoch"] * res["cells_per_epoch_processed"] / n_train)
