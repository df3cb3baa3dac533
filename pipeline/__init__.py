"""omicsclip: contrastive pretraining for paired single-cell omics (RNA + surface protein).

The notebook API (:mod:`omicsclip.api`) is available at the top level, loaded on first use so that
``import omicsclip`` (and ``omicsclip --help``) stays fast::

    import omicsclip as oc

    model = oc.train_model(mdata, "models/pbmc")
    model.embed(mdata)

The library never imports the CLI (``cli``) or Snakemake.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("omicsclip")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

#: Names of :mod:`omicsclip.api` re-exported here (imported on first access: the API pulls in torch).
_API = ("Head", "OmicsClipModel", "Reference", "build_index", "evaluate", "fit_head", "load_head", "load_index",
        "load_model", "pl", "train_model")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from omicsclip import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'omicsclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
