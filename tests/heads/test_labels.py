"""Labels of an obs column (the shared unlabelled rule), per-class draws, the unlabelled pool."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from omicsclip.errors import InputError
from omicsclip.heads import label_array, sample_per_class, unlabelled_pool
from omicsclip.heads.labels import cap_cells


def test_labels_unlabelled_and_ignored():
    obs = pd.DataFrame({"ct": ["T", None, "", "unknown", "B", np.nan, " NK "]})
    assert list(label_array(obs, "ct")) == ["T", None, None, "unknown", "B", None, "NK"]
    assert list(label_array(obs, "ct", ["unknown"])) == ["T", None, None, None, "B", None, "NK"]
    with pytest.raises(InputError, match="no label column 'cell'"):
        label_array(obs, "cell", source="emb.zarr")


def test_sample_per_class_draws_training_cells_only():
    labels = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 2 + [None] * 3, dtype=object)
    train = np.ones(len(labels), bool)
    train[:5] = False
    idx = sample_per_class(labels, train, 3, np.random.default_rng(0))
    assert train[idx].all()
    assert sorted(pd.Series(labels[idx]).value_counts().items()) == [("a", 3), ("b", 3), ("c", 2)]  # c capped
    again = sample_per_class(labels, train, 3, np.random.default_rng(0))
    assert np.array_equal(idx, again)



def test_na_is_unlabelled_like_everywhere_else():
    """"NA" (and "<NA>", "none", pandas' NA) means no label here too; it used to be a class in the heads."""
    obs = pd.DataFrame({"ct": pd.array(["T", "NA", "na", "<NA>", "None", pd.NA, "B"], dtype="string")})
    assert list(label_array(obs, "ct")) == ["T", None, None, None, None, None, "B"]
    cat = pd.DataFrame({"ct": pd.Categorical(["NA", "NK", "NA"])})
    assert list(label_array(cat, "ct")) == [None, "NK", None]


def test_unlabelled_pool_is_the_training_split():
    split = np.array(["train", "test", "train", "val"])
    assert list(unlabelled_pool(split, 4, seed=0)) == [0, 2]
    assert list(unlabelled_pool(None, 3, seed=0)) == [0, 1, 2]


def test_cap_cells_is_a_stratified_seeded_sample_that_keeps_rare_classes():
    labels = np.array(["a"] * 9000 + ["b"] * 960 + ["c"] * 40, dtype=object)
    idx = np.arange(10_000)
    out = cap_cells(idx, labels, 1000, np.random.default_rng(0))
    assert np.array_equal(out, cap_cells(idx, labels, 1000, np.random.default_rng(0)))
    counts = {c: int((labels[out] == c).sum()) for c in "abc"}
    assert counts == {"a": 900, "b": 96, "c": 40}  # shares of 1,000 rounded up; a rare class is kept whole
    assert np.array_equal(out, np.sort(out))
    assert len(np.unique(out)) == len(out)
    assert np.array_equal(cap_cells(idx, labels, 0, np.random.default_rng(0)), idx)  # 0 = no cap
    assert np.array_equal(cap_cells(idx[:500], labels, 1000, np.random.default_rng(0)), idx[:500])
