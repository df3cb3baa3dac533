"""The ``omicsclip`` command: each stage is one command that parses options and calls one library function."""

from __future__ import annotations

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


if __name__ == "__main__":  # pragma: no cover
    app()
