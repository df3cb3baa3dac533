"""Fuzzed configs (issue #12): a hostile ``--config`` file or ``--set`` string ends in exit 0 with a valid store,
or exit 2 with one line and nothing left behind.

Config files are drawn as: the default config with hostile values put at known or invented keys (wrong types,
NaN/inf, huge numbers, control characters, deep nesting, non-text keys), raw YAML snippets (tags, aliases,
anchors, flow brackets), a valid config truncated at a random offset, or random bytes. ``--set`` strings mix known
and invented keys with hostile values. Each case runs ``omicsclip ingest`` of a tiny ``.h5ad`` (it loads and
validates the whole config first, and uses its ``ingest`` section) in-process through :func:`fuzzing.invoke`;
:func:`fuzzing.check_contract` asserts the contract and counts the cases (``config:file``, ``config:set``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fuzzing import check_contract, invoke, listing
from hypothesis import given
from hypothesis import strategies as st

from omicsclip.config import default_config

pytestmark = pytest.mark.fuzz

DEFAULT = default_config()
KNOWN_KEYS = [f"{s}.{k}" for s, sec in DEFAULT.items() if isinstance(sec, dict) for k in sec]

# values a config can hold once parsed: every YAML type and then some
_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1),
    st.text(max_size=8),
    st.text(st.sampled_from(list('\t\n\r"\'\\ \x00\x07\x1b\x85\u2028:#{}[],&*!|>%@`')), max_size=5),
    st.sampled_from(["auto", "flat", "cpu", "cuda:0", "strict", "intersect", "(", "[", "(?i)isotype", ".*",
                     "cell_type", "", "rna", "prot", "X", "counts"]),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=8)
_KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.sampled_from(list(DEFAULT)),
                  st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(list(DEFAULT)), st.text(max_size=6)),
                  st.text(max_size=12))
# raw YAML text for a value: tags, aliases, YAML's own NaN/inf spellings, flow syntax left open
_RAW = st.sampled_from([
    ".nan", ".NaN", ".inf", "-.inf", "1.0e+400", "1e400", "0x1F", "0o17", "1_000", "~", "null", "yes", "2020-01-01",
    "!!binary aGk=", "!!float x", "!!int 1.5", "!!timestamp y", "!!python/name:os.system", "!!set {a}",
    "&a [*a]", "*undefined", "[", "{", "'", '"', "|", ">", "@", "`", "%", "- a", "[" * 60 + "]" * 60,
    "{a: " * 40 + "1" + "}" * 40, "9" * 5000, "[1, 2.0, .nan]", "{? [a]: 1}",
])

# schema-valid but hostile ingest settings: the config passes and ingest itself must cope
_INGEST = {
    "isotype_patterns": st.lists(st.one_of(st.text(max_size=5), st.sampled_from(["(", ".*", "^P", "[", "\\"])),
                                 max_size=3),
    "hto_patterns": st.lists(st.one_of(st.text(max_size=5), st.sampled_from(["(", ".*", "^P1$", "*"])), max_size=3),
    "keep_isotypes": st.booleans(),
    "protein_key": st.one_of(st.just(""), st.text(max_size=6), st.just("protein")),
    "layer": st.one_of(st.just(""), st.text(max_size=6)),
    "pairing": st.sampled_from(["strict", "intersect"]),
    "allow_normalized": st.booleans(),
    "make_unique": st.booleans(),
    "min_counts_rna": st.one_of(st.integers(0, 10**9), st.floats(0, 1e12)),
    "min_counts_prot": st.one_of(st.integers(0, 100), st.floats(0, 100)),
    "chunk_cells": st.integers(1, 2**31 - 1),
    "rna_modality": st.text(min_size=1, max_size=5),
}
_INGEST_ITEMS = st.sampled_from(sorted(_INGEST)).flatmap(
    lambda k: _INGEST[k].map(lambda v: (k, v)))


@st.composite
def config_documents(draw) -> bytes:
    """A hostile config file."""
    mode = draw(st.sampled_from(["mutate", "mutate", "raw", "truncate", "bytes", "keys", "ingest", "ingest"]))
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in DEFAULT.items()}
    if mode == "ingest":
        cfg["ingest"].update(draw(st.lists(_INGEST_ITEMS, min_size=1, max_size=3)))
        return yaml.safe_dump(cfg, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if mode == "bytes":
        return draw(st.binary(max_size=200))
    if mode == "truncate":
        text = yaml.safe_dump(cfg, sort_keys=False).encode()
        return text[: draw(st.integers(0, len(text)))]
    if mode == "keys":  # non-text, control-character or deeply nested keys
        key = draw(st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=6)))
        section = draw(st.sampled_from([*DEFAULT, "datasets"]))
        nested = {key: draw(_VALUES)}
        for _ in range(draw(st.integers(0, 50))):
            nested = {"x": nested}
        doc = {section: nested}
        return yaml.safe_dump(doc, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(KNOWN_KEYS))
        section, name = key.split(".", 1)
        if mode == "raw":
            lines.append(f"{section}:\n  {name}: {draw(_RAW)}\n")
        else:
            cfg[section][name] = draw(_VALUES)
    if mode == "raw":
        return "".join(lines).encode()
    return yaml.safe_dump(cfg, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")


set_items = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", _KEYS, st.one_of(_RAW, st.text(max_size=10))),
    st.builds(lambda k, v: f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}", st.sampled_from(KNOWN_KEYS),
              _VALUES),
    st.text(max_size=15),  # maybe no '=' at all
    _INGEST_ITEMS.map(lambda kv: f"ingest.{kv[0]}={yaml.safe_dump(kv[1], default_flow_style=True).strip()}"),
)


@pytest.fixture(scope="module")
def tiny_input(tmp_path_factory):
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, g, p = 24, 12, 3
    obs = pd.DataFrame({"cell_type": pd.Categorical(["a", "b"] * (n // 2))}, index=[f"c{i}" for i in range(n)])
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(2.0, (n, g)).astype(np.float32)), obs=obs,
                   var=pd.DataFrame(index=[f"G{i}" for i in range(g)]))
    a.obsm["protein"] = pd.DataFrame(rng.poisson(20, (n, p)).astype(np.float32), index=obs.index,
                                     columns=[f"P{i}" for i in range(p)])
    path = tmp_path_factory.mktemp("cfg_fuzz_input") / "cells.h5ad"
    a.write_h5ad(path)
    return path


def _run(entry: str, tiny_input: Path, work: Path, extra: list) -> None:
    out = work / "out.zarr"
    before = listing(work)
    result = invoke(["ingest", tiny_input, "--out", out, *extra])
    if check_contract(entry, result, work, before, [out]) == 0:
        from omicsclip.io.store import read_store

        store = read_store(out)
        assert store.obs.shape[0] <= 24
        assert set(store.obs.index) <= {f"c{i}" for i in range(24)}


@given(doc=config_documents())
def test_fuzz_config_file(tiny_input, tmp_path, doc):
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    cfg = work / "config.yaml"
    cfg.write_bytes(doc)
    _run("config:file", tiny_input, work, ["--config", cfg])


@given(items=st.lists(set_items, min_size=1, max_size=3))
def test_fuzz_config_set(tiny_input, tmp_path, items):
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    _run("config:set", tiny_input, work, [x for item in items for x in ("--set", item)])
