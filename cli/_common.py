"""Shared CLI plumbing: one-line errors with exit codes, config loading, logging."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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
    typer.echo(f"omicsclip: error: {one_line(message)}", err=True)
    raise typer.Exit(code)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(message: str) -> str:
    r"""Return ``message`` with line breaks and other control characters shown as escapes (``\n``, ``\x1b``).

    A name or value quoted in an error (a file name, a label, a config value) may hold them; the refusal must stay
    one line and must not drive the terminal.
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(message).strip())


class Terminated(BaseException):  # noqa: N818 - named after the signal's effect, like KeyboardInterrupt
    """SIGTERM during a command: unwinds like ``KeyboardInterrupt`` so temporaries are removed."""


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """For the block, SIGTERM raises :class:`Terminated` (training replaces it with its checkpointing handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def guarded(func: F) -> F:
    """Turn library exceptions into one clear line and an exit code (2 bad input, 1 failure).

    SIGINT and SIGTERM unwind the command (temporaries are removed) and exit 130 and 143.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_unwinds():
                return func(*args, **kwargs)
        except typer.Exit:
            raise
        except OmicsclipError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Terminated:
            fail("terminated", 143)
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
