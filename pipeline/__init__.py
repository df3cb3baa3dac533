"""omicsclip: contrastive pretraining for paired single-cell omics (RNA + surface protein).

The library never imports the CLI (``cli``) or Snakemake.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("omicsclip")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
