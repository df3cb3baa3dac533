"""omicsclip.io.tsv: escaped fields round-trip through pandas and stay one record per line (issue #12, case 5)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from omicsclip.io.tsv import escape, escape_frame, read_tsv, to_tsv, unescape

# names a hostile input can hold: separators, line breaks, quotes, escapes, NA-like text, unicode, C0/C1 controls
HOSTILE = ["plain", "tab\there", "new\nline", "cr\rlf\r\n", 'dq"uote', '"', "'single'", "back\\slash",
           "\\t literal", "\\", "NA", "nan", "", " padded ", "ünï©ødé ✓ 细胞", "nel\x85x", "bell\x07\x00nul",
           "del\x7f", "\u2028sep", "# comment", "1e5", "-"]


def _lines(path) -> int:
    """What ``wc -l`` says: the number of newline bytes."""
    return path.read_bytes().count(b"\n")


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_round_trip_has_no_control_characters(text):
    e = escape(text)
    assert unescape(e) == text
    assert not any(ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f for ch in e)


def test_escape_conventions():
    assert escape("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert escape("\x01\x85") == "\\x01\\x85"
    assert escape(3) == "3"
    assert unescape("C:\\\\new") == "C:\\new"  # an escaped backslash is not the start of \n
    assert unescape("\\q") == "\\q"  # unknown escapes stay as they are


@given(st.text())
def test_escape_is_reversible_for_any_text(text):
    e = escape(text)
    assert unescape(e) == text
    assert not {"\t", "\n", "\r"} & set(e)


def test_frame_with_hostile_names_round_trips(tmp_path):
    n = len(HOSTILE)
    df = pd.DataFrame({
        "id": HOSTILE,
        "label": pd.Categorical(HOSTILE[::-1]),
        "score": np.linspace(0, 1, n),
        "rank": np.arange(n, dtype=np.int32),
        **{f"fraction_{c}": np.full(n, 0.5) for c in HOSTILE[:6]},
    })
    path = tmp_path / "t.tsv"
    to_tsv(df, path)
    assert _lines(path) == n + 1  # one header line plus one line per record
    assert b"\r" not in path.read_bytes()
    plain = pd.read_csv(path, sep="\t")
    assert plain.shape == df.shape
    assert list(plain.columns) == [escape(c) for c in df.columns]
    back = read_tsv(path, dtype={"id": str, "label": str})
    assert list(back.columns) == list(df.columns)
    assert back["id"].tolist() == HOSTILE
    assert back["label"].tolist() == HOSTILE[::-1]
    np.testing.assert_allclose(back["score"], df["score"])
    assert back["rank"].tolist() == list(range(n))
    # every line has the same number of fields for cut/awk users (quotes hold no separator)
    fields = {line.count("\t") for line in path.read_text(encoding="utf-8").split("\n")[:-1]}
    assert fields == {df.shape[1] - 1}


def test_chunked_appends_to_an_open_file():
    buf = io.StringIO()
    to_tsv(pd.DataFrame({"a\tb": ["x\ny"]}), buf)
    to_tsv(pd.DataFrame({"a\tb": ["z"]}), buf, header=False)
    assert buf.getvalue() == "a\\tb\nx\\ny\nz\n"


def test_missing_values_and_numbers_untouched():
    df = pd.DataFrame({"t": ["a", None, np.nan], "x": [1.5, np.nan, 2.0]})
    out = escape_frame(df)
    assert out["t"].iloc[0] == "a"
    assert out["t"].iloc[1:].isna().all()
    assert out["x"].dtype == np.float64
