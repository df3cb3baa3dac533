"""Load, merge, override and validate configs against configs/schema.yaml (the one source of truth).

The configs ship inside the package (``omicsclip.configs``, the repository's ``configs/`` folder) and are found
with :mod:`importlib.resources`, so an installed wheel and a source checkout read the same files.
"""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from omicsclip.errors import InputError


def config_path(name: str) -> Path:
    """Path of a config shipped with the package, e.g. ``config_path("schema.yaml")``.

    Parameters
    ----------
    name
        File name inside ``configs/`` (``default.yaml``, ``schema.yaml``, ``demo.yaml``, ``profiles/slurm``, ...).
    """
    return Path(str(files("omicsclip.configs").joinpath(name)))


SCHEMA_PATH = config_path("schema.yaml")
DEFAULT_PATH = config_path("default.yaml")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"config {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"config {path}: not a text (YAML) file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_schema() -> dict[str, Any]:
    """Return the JSON Schema shared by the CLI and the Snakefile."""
    return _read_yaml(SCHEMA_PATH)


def default_config() -> dict[str, Any]:
    """Return a fresh copy of configs/default.yaml."""
    return _read_yaml(DEFAULT_PATH)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict[str, Any]:
    """Turn ``section.key=value`` (value parsed as YAML) into a nested mapping."""
    if "=" not in item:
        raise InputError(f"--set {item!r}: expected section.key=value")
    dotted, raw = item.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise InputError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    cur = nested
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return nested


def validate_config(cfg: dict[str, Any], *, source: str = "config") -> None:
    """Validate against the schema; raise InputError naming the first offending key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"{source}: {where}: {err.message}{more}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults <- user YAML <- ``--set`` overrides, validated.

    Parameters
    ----------
    path
        Optional YAML file; its keys override ``configs/default.yaml``.
    overrides
        ``section.key=value`` strings applied last.
    """
    cfg = default_config()
    source = "config"
    if path is not None:
        cfg = deep_merge(cfg, _read_yaml(Path(path)))
        source = f"config {path}"
    for item in overrides or []:
        cfg = deep_merge(cfg, parse_override(item))
    validate_config(cfg, source=source)
    return cfg
