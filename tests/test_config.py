"""Config validation: non-finite numbers (issue #12, case 1), structure, strict integers, one-line messages."""

from __future__ import annotations

import pytest
from conftest import tiny_store
from fuzzing import invoke, listing

from omicsclip.config import MAX_DEPTH, default_config, load_config, load_schema
from omicsclip.errors import InputError


def _number_keys() -> list[str]:
    """Every ``section.key`` the schema types as a number or a list of numbers."""
    schema = load_schema()
    defs = schema["definitions"]

    def resolve(node):
        return defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node

    keys = []
    for section, spec in schema["properties"].items():
        for key, prop in spec.get("properties", {}).items():
            prop = resolve(prop)
            items = resolve(prop["items"]) if prop.get("type") == "array" and "items" in prop else {}
            if prop.get("type") == "number" or items.get("type") == "number":
                keys.append(f"{section}.{key}")
    return keys


NUMBER_KEYS = _number_keys()


def test_every_number_key_is_found():
    assert {"train.lr", "train.temperatures", "query.temperature", "ingest.min_counts_rna"} <= set(NUMBER_KEYS)


@pytest.mark.parametrize("key", NUMBER_KEYS)
@pytest.mark.parametrize(("value", "shown"), [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf")])
def test_non_finite_refused_for_every_number_key(key, value, shown):
    section, name = key.split(".")
    as_list = isinstance(default_config()[section][name], list)
    raw = f"[{value}]" if as_list else value
    with pytest.raises(InputError) as exc:
        load_config(None, [f"{key}={raw}"])
    where = f"{key}.0" if as_list else key
    assert str(exc.value) == f"config key {where}: must be a finite number (got {shown})"


@pytest.mark.parametrize("raw", [".NaN", ".Inf", "-.INF", "1.0e+400", "-1.0e+999"])
def test_yaml_spellings_of_non_finite(raw):
    with pytest.raises(InputError, match="^config key train.lr: must be a finite number"):
        load_config(None, [f"train.lr={raw}"])


def test_non_finite_in_a_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: .inf\n")
    with pytest.raises(InputError, match=r"^config .*c\.yaml key train\.lr: must be a finite number \(got inf\)$"):
        load_config(cfg)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("cfg") / "cells.zarr", n_cells=60, n_genes=20, n_proteins=3)


def _refused(result, folder, before):
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("omicsclip: error: config")
    assert "Traceback" not in result.stderr
    assert listing(folder) == before


def test_cli_train_refuses_nan_lr_before_writing(store, tmp_path):
    before = listing(tmp_path)
    r = invoke(["train", store, "--out", tmp_path / "m", "--set", "train.lr=.nan"])
    _refused(r, tmp_path, before)
    assert "train.lr: must be a finite number (got nan)" in r.stderr
    assert not (tmp_path / "m.partial").exists()


def test_cli_train_refuses_inf_in_config_file(store, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  temperature: .inf\n")
    before = listing(tmp_path)
    r = invoke(["train", store, "--out", tmp_path / "m", "--config", cfg])
    _refused(r, tmp_path, before)
    assert "train.temperature: must be a finite number (got inf)" in r.stderr


@pytest.mark.parametrize(("text", "match"), [
    ("train: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("train: {lr: " + "[" * (MAX_DEPTH + 5) + "1" + "]" * (MAX_DEPTH + 5) + "}\n", "nested too deeply"),
    ("train: &a {lr: *a}\n", "nested too deeply"),
    ("datasets: {1: {synthetic: {}}}\n", r"datasets\.1: keys must be text"),
    ("{.nan: 1}\n", "keys must be text"),
    ("train: {epochs: 2.0}\n", r"train\.epochs: 2\.0 is not of type 'integer'"),
    ("train: {seed: 99999999999999999999}\n", r"train\.seed: .* greater than the maximum"),
    ("train: {num_threads: 100000}\n", r"train\.num_threads: .* greater than the maximum"),
    ("train: {lr: !!float x}\n", "not valid YAML"),
    ("train: {lr: !!timestamp x}\n", "not valid YAML"),
    ("train: {lr: " + "9" * 5000 + "}\n", "not valid YAML|greater than|not of type"),
    ("train: {monitor: [" + ", ".join(["x"] * 5000) + "]}\n", r"train\.monitor: "),
    ("train: {val_within: maybe}\n", r"train\.val_within: "),
])
def test_hostile_documents_are_one_line_input_errors(tmp_path, text, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(InputError, match=match) as exc:
        load_config(cfg)
    msg = str(exc.value)
    assert "\n" not in msg
    assert len(msg) < 400 + len(str(cfg))


@pytest.mark.parametrize("item", ["train.l\nr=1", "tr\tain.lr=1", "train.lr=\x00", "datasets.a\nb.input=5"])
def test_control_characters_in_overrides_give_one_line(item):
    with pytest.raises(InputError) as exc:
        load_config(None, [item])
    assert "\n" not in str(exc.value)
    assert "\t" not in str(exc.value)


def test_valid_extremes_accepted():
    cfg = load_config(None, ["train.seed=4294967295", "index.threads=4096", "train.lr=1e-3", "train.lr=0.5"])
    assert cfg["train"]["seed"] == 4294967295
