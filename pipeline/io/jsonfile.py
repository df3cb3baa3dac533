"""Read a JSON file with a one-line :class:`~pipeline.errors.InputError` naming the file when it cannot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import InputError


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; :class:`InputError` naming the file when it is missing, unreadable or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not text"
        raise InputError(f"{path}: not valid JSON ({msg})") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold a JSON object (a mapping)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
