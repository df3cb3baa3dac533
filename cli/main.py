"""The ``omicsclip`` command: each stage is one command that parses options and calls one library function."""

from __future__ import annotations

import logging
import os
import sys

import typer

from omicsclip.cli import data_cmds, demo_cmd, heads_cmds, index_cmds, pool_cmd, train_cmds
from omicsclip.cli._common import setup_logging

app = typer.Typer(
    name="omicsclip",
    help="Contrastive pretraining for paired single-cell omics (CITE-seq RNA + surface protein).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the omicsclip version."""
    from omicsclip import __version__

    typer.echo(__version__)


for _module in (data_cmds, pool_cmd, train_cmds, index_cmds, heads_cmds, demo_cmd):
    _module.register(app)


INTERRUPTED = (130, 143)  # the exit codes of SIGINT and SIGTERM (omicsclip.cli._common.guarded)


def main() -> None:
    """Run the ``omicsclip`` command (the console script), ending at once after SIGINT or SIGTERM.

    By then the command has unwound (its temporaries are removed) and printed its one line. Zarr does its I/O on an
    event-loop thread; an interrupted read or write leaves coroutines there that the interpreter's teardown would
    report after that line ("coroutine ... was never awaited", "cannot schedule new futures after shutdown"). So
    stdio and logging are flushed and the process exits without the teardown.
    """
    try:
        app()
    except SystemExit as exc:
        if exc.code not in INTERRUPTED:
            raise
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.code)


if __name__ == "__main__":  # pragma: no cover
    main()
