"""Shared CLI plumbing: one-line errors with exit codes, config loading, logging."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from omicsclip.errors import OmicsclipError

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config; its keys override configs/default.yaml.", dir_okay=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one config key: section.key=value (repeatable)."),
]


def fail(message: str, code: int) -> None:
    """Print one line to stderr and exit with ``code``.

    Parameters
    ----------
    message
        What went wrong (without the ``omicsclip: error:`` prefix).
    code
        The exit status.
    """
    typer.echo(f"omicsclip: error: {message}", err=True)
    raise typer.Exit(code)


def guarded(func: F) -> F:
    """Turn library exceptions into one clear line and an exit code (2 bad input, 1 failure)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except OmicsclipError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as exc:  # noqa: BLE001 - last line of defence: no tracebacks for users
            if os.environ.get("OMICSCLIP_DEBUG"):
                raise
            msg = str(exc).splitlines()[0] if str(exc) else ""
            fail(f"{type(exc).__name__}: {msg} (set OMICSCLIP_DEBUG=1 for a traceback)", 1)

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO and up, or DEBUG and up when ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load_cfg(config: Path | None, overrides: list[str] | None) -> dict[str, Any]:
    """Load and validate the config: defaults, then ``config``, then ``--set`` ``overrides``."""
    from omicsclip.config import load_config

    return load_config(config, overrides or [])
