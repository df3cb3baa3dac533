"""Package data: the default config, the JSON Schema every config is validated against, example configs
and Snakemake profiles (found with ``importlib.resources``; see ``omicsclip.config``)."""

__all__: list[str] = []
