"""JSON files: one writer (strict JSON, numpy values converted) and readers with one-line errors naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError


def jsonable(obj: Any) -> Any:
    """Return ``obj`` as plain JSON values.

    Numpy scalars and arrays (and pandas indexes) become Python numbers and lists, paths strings, bytes decoded
    strings, mapping keys strings, and non-finite floats ``None`` (strict JSON has no NaN).

    Parameters
    ----------
    obj
        Nested dicts, lists, tuples, arrays and scalars (e.g. an AnnData ``uns`` read from a store).

    Returns
    -------
    Any
        The same structure made of ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray | pd.Index):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj: Any, *, compact: bool = False) -> str:
    """Serialise ``obj`` the one way every omicsclip JSON text is written.

    Parameters
    ----------
    obj
        Anything :func:`jsonable` accepts.
    compact
        One line without a final newline (a JSON string stored inside another file, e.g. an AnnData ``uns``
        value); the default is indented with a final newline (a JSON file, the CLI's ``--json`` output).

    Returns
    -------
    str
        Strict JSON (``NaN`` and infinities written as ``null``).
    """
    if compact:
        return json.dumps(jsonable(obj), allow_nan=False)
    return json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    """Write :func:`dumps_json` of ``obj`` to ``path``; callers make it atomic with ``atomic_path``.

    Parameters
    ----------
    path
        The file to write (replaced if present).
    obj
        Anything :func:`jsonable` accepts.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.write_text(dumps_json(obj))
    return path


def read_json(path: str | Path) -> Any:
    """Parse a JSON file.

    Parameters
    ----------
    path
        The file to read.

    Returns
    -------
    Any
        The parsed value.

    Raises
    ------
    InputError
        Naming the file when it is missing, unreadable or not valid JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not text"
        raise InputError(f"{path}: not valid JSON ({msg})") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """Parse a JSON file that must hold a JSON object (a mapping).

    Parameters
    ----------
    path
        The file to read.

    Returns
    -------
    dict
        The parsed object.

    Raises
    ------
    InputError
        As :func:`read_json`, or when the top level is not an object.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
