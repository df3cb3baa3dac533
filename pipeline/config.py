"""Load, merge, override and validate configs against configs/schema.yaml (the one source of truth).

The configs ship inside the package (``omicsclip.configs``, the repository's ``configs/`` folder) and are found
with :mod:`importlib.resources`, so an installed wheel and a source checkout read the same files.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator
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
MAX_DEPTH = 32  # configs nest 4 levels deep (datasets.<name>.synthetic.cells); deeper is not a config
_MAX_MESSAGE = 240  # characters of a schema message (they quote the offending value, however large)
# what the YAML loader raises besides YAMLError on hostile text (bad !!int, !!float or !!timestamp values)
_LOAD_ERRORS = (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError)


def _read_yaml(path: Path) -> dict[str, Any]:
    source = f"config {_name(str(path))}"
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({_one_line(str(exc.strerror or exc))})") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a text (YAML) file") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise InputError(f"{source}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    except _LOAD_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{source}: not valid YAML ({_one_line(first)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    return data


@functools.lru_cache(maxsize=4)
def _shipped(path: Path) -> dict[str, Any]:
    """Parse a config shipped with the package once per process (the pure-Python YAML parser is slow)."""
    return _read_yaml(path)


def load_schema() -> dict[str, Any]:
    """Return the JSON Schema shared by the CLI and the Snakefile."""
    return copy.deepcopy(_shipped(SCHEMA_PATH))


def default_config() -> dict[str, Any]:
    """Return a fresh copy of configs/default.yaml."""
    return copy.deepcopy(_shipped(DEFAULT_PATH))


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
    except RecursionError:
        raise InputError(f"--set {_name(dotted)}: value nested too deeply (more than {MAX_DEPTH} levels)") from None
    except _LOAD_ERRORS:
        value = raw
    nested: dict[str, Any] = {}
    cur = nested
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return nested


def _name(key: Any) -> str:
    """Return ``key`` as printable one-line text (``repr`` when it holds control or non-printing characters)."""
    text = str(key)
    return text if isinstance(key, int | str) and text.isprintable() else repr(key)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Yield ``(path, value)`` for every node, depth first; never deeper than ``MAX_DEPTH + 1`` levels."""
    stack = [(path, node)]
    while stack:
        where, value = stack.pop()
        yield where, value
        if len(where) > MAX_DEPTH:
            continue
        if isinstance(value, dict):
            stack.extend((where + (k,), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((where + (i,), v) for i, v in reversed(list(enumerate(value))))


def _where(path: tuple[Any, ...]) -> str:
    return ".".join(_name(p) for p in path) or "(top level)"


def check_structure(data: Any, *, source: str = "config") -> None:
    """Refuse what no schema rule can say: nesting deeper than ``MAX_DEPTH`` and keys that are not text.

    Called on each layer before it is merged (merging copies recursively), so a hostile file or ``--set``
    value is a one-line error, not a ``RecursionError``.

    Parameters
    ----------
    data
        A loaded YAML document or one parsed ``--set`` override.
    source
        How the error names the layer (``config``, ``config PATH``).

    Raises
    ------
    InputError
        Naming the first offending key.
    """
    for path, value in _walk(data):
        if len(path) > MAX_DEPTH:
            raise InputError(f"{source}: {_where(path[:3])}: nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise InputError(f"{source}: {_where(path + (key,))}: keys must be text, got "
                                     f"{type(key).__name__} {_name(key)} (quote it)")


def _is_finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _strict_validator(schema: dict[str, Any]) -> Any:
    """Draft 2020-12 with YAML-minded types: ``integer`` excludes floats such as ``2.0`` (and booleans)."""
    import jsonschema

    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, v: isinstance(v, int) and not isinstance(v, bool))
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)
    return cls(schema)


def validate_config(cfg: dict[str, Any], *, source: str = "config") -> None:
    """Validate against the schema, then refuse non-finite numbers; raise InputError naming the first offending key.

    Parameters
    ----------
    cfg
        The merged configuration.
    source
        How the error names the config (``config``, ``config PATH``).

    Raises
    ------
    InputError
        One line: ``SOURCE: KEY: what is wrong``.
    """
    check_structure(cfg, source=source)
    validator = _strict_validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: [_name(p) for p in e.absolute_path])
    if errors and not _is_finite(errors[0].instance):
        errors = []  # -.inf below a minimum: say what is really wrong (the walk below names it)
    if errors:
        err = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"{source}: {_where(tuple(err.absolute_path))}: {_one_line(err.message)}{more}")
    for path, value in _walk(cfg):
        if not _is_finite(value):
            raise InputError(f"{source} key {_where(path)}: must be a finite number (got {value})")


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
        source = f"config {_name(str(path))}"
        data = _read_yaml(Path(path))
        check_structure(data, source=source)
        cfg = deep_merge(cfg, data)
    for item in overrides or []:
        layer = parse_override(item)
        check_structure(layer, source=f"--set {_name(item)}")
        cfg = deep_merge(cfg, layer)
    validate_config(cfg, source=source)
    return cfg
