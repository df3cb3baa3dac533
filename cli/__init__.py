"""The ``omicsclip`` command line (typer): thin commands that build a config and call the library."""

__all__: list[str] = []  # the console script is omicsclip.cli.main:main (the Typer app: omicsclip.cli.main.app)
