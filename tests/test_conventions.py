"""The shared rules: what counts as "unlabelled", the modality order and the embedding keys."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from omicsclip.conventions import (
    EMBEDDING_KEYS,
    MODALITIES,
    OBSM_JOINT,
    OBSM_PROT,
    OBSM_RNA,
    UNLABELLED_VALUES,
    is_unlabelled,
    label_values,
)


@pytest.mark.parametrize("value", [None, np.nan, float("nan"), pd.NA, pd.NaT, "", "  ", "nan", "NaN", "None",
                                   "none", "NA", "na", "<NA>", " <na> "])
def test_unlabelled_values(value):
    assert is_unlabelled(value)


@pytest.mark.parametrize("value", ["B cell", "CD4 T", "0", 0, 1.5, "n a", "unknown", "NAN cell", "nana",
                                   np.array([1, 2]), ["a"]])
def test_labels_that_count(value):
    assert not is_unlabelled(value)


def test_label_values_strips_and_ignores():
    s = pd.Series(["B", " T ", None, np.nan, "NA", "", "doublet", 3], dtype=object)
    out = label_values(s, ignore=[" doublet "])
    assert out.dtype == object
    assert out.tolist() == ["B", "T", None, None, None, None, None, "3"]
    cat = pd.Categorical(["a", None, "b"])
    assert label_values(cat).tolist() == ["a", None, "b"]
    # ignored values whatever their case, as the unlabelled ones are: "Unknown" is not a class
    assert label_values(["Unknown", "UNKNOWN", "unknown", "B"], ignore=["unknown"]).tolist() == [None] * 3 + ["B"]


def test_label_values_agrees_with_is_unlabelled():
    values = ["x", "nan", None, "<NA>", " y", "None", np.nan]
    assert [v is None for v in label_values(values)] == [is_unlabelled(v) for v in values]


def test_modalities_and_embedding_keys():
    assert MODALITIES == ("rna", "prot")
    assert EMBEDDING_KEYS == {"rna": OBSM_RNA, "prot": OBSM_PROT, "joint": OBSM_JOINT}
    assert list(EMBEDDING_KEYS)[:2] == list(MODALITIES)
    assert all(v == v.strip().lower() for v in UNLABELLED_VALUES)
