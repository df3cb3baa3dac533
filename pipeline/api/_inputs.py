"""What the notebook API reads and writes back: configs, data in any form, results into AnnData/MuData.

Data reach the library as the same :class:`~omicsclip.io.readers.InputSource` whatever their form: paths go
through :func:`omicsclip.io.readers.open_input`, objects in memory (MuData, AnnData with protein in ``obsm``, an
``(rna, prot)`` pair of AnnData; in memory, backed or dask) through
:func:`omicsclip.io.anndata_input.open_anndata`. Pairing, validation and chunked reading are theirs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError

#: The ``obsm`` prefix of the embeddings: ``<key_added>_rna``, ``_prot``, ``_joint`` (``X_omicsclip_*`` by default).
_EMBED_SUFFIXES = ("rna", "prot", "joint")
#: Reader options that apply to files only.
_FILE_ONLY = ("genes_in_rows",)

ConfigLike = str | Path | Mapping[str, Any] | Sequence[str] | None


def resolve_config(config: ConfigLike = None) -> dict[str, Any]:
    """Return a full, validated config: ``configs/default.yaml`` updated by ``config``.

    Parameters
    ----------
    config
        ``None`` (the defaults), a YAML file, a nested mapping such as ``{"train": {"epochs": 20}}``, or
        ``section.key=value`` strings as the command line's ``--set`` takes them.

    Returns
    -------
    dict
        The validated config.
    """
    from omicsclip.config import deep_merge, default_config, load_config, validate_config

    if config is None:
        return load_config()
    if isinstance(config, str | Path):
        return load_config(config)
    if isinstance(config, Mapping):
        cfg = deep_merge(default_config(), dict(config))
        validate_config(cfg, source="config")
        return cfg
    if isinstance(config, Sequence) and all(isinstance(s, str) for s in config):
        return load_config(None, list(config))
    raise InputError(f"config: expected a YAML path, a mapping or 'section.key=value' strings, "
                     f"got {type(config).__name__}")


def is_path_input(data: Any) -> bool:
    """Return whether ``data`` names files (a path, or a list/tuple of paths) rather than objects in memory."""
    if isinstance(data, str | Path):
        return True
    return isinstance(data, list | tuple) and len(data) > 0 and all(isinstance(d, str | Path) for d in data)


def open_data(data: Any, *, ingest: Mapping[str, Any], require: str = "both", modality: str | None = None,
              fmt: str = "auto", model_proteins: Sequence[str] | None = None, **options: Any) -> Any:
    """Open data in any supported form as an input source (close it when done).

    Parameters
    ----------
    data
        A path or two (any ingest format, or a paired store ``.zarr``), a MuData, an AnnData (protein in
        ``obsm``, or one modality), or an ``(rna, prot)`` pair of AnnData.
    ingest
        The ``ingest:`` config section (reader options: modality names, protein key, layer, isotypes, pairing,
        ``harmonise_proteins`` and ``protein_aliases``: canonical protein names, as ingest gives a store).
    require
        ``both`` (RNA and protein) or ``any`` (one modality is enough).
    modality
        What a single-modality input holds: ``rna`` or ``prot`` (default: detect).
    fmt
        File format for path inputs (see :func:`omicsclip.io.readers.open_input`).
    model_proteins
        A model's protein names: the data's proteins are renamed to them where both have the same canonical
        name (:meth:`~omicsclip.io.readers.InputSource.match_proteins`; models trained before harmonisation
        keep their panel's names).
    **options
        Reader options that win over the ``ingest`` section (e.g. ``layer="counts"``, ``protein_key="adt"``).

    Returns
    -------
    InputSource
        The cells, paired and validated, readable in chunks.
    """
    from omicsclip.io.readers import open_input, reader_options

    opts = {**reader_options(ingest), **{k: v for k, v in options.items() if v is not None}}
    if is_path_input(data):
        paths = [data] if isinstance(data, str | Path) else list(data)
        src = open_input(paths, fmt, require=require, modality=modality, **opts)
    else:
        from omicsclip.io.anndata_input import open_anndata

        opts = {k: v for k, v in opts.items() if k not in _FILE_ONLY}
        src = open_anndata(data, require=require, modality=modality, **opts)
    if model_proteins is not None and opts.get("harmonise_proteins"):
        try:
            src.match_proteins(model_proteins, opts.get("protein_aliases"))
        except BaseException:
            src.close()
            raise
    return src


@contextmanager
def opened(data: Any, **kwargs: Any) -> Iterator[Any]:
    """Context manager around :func:`open_data` (same arguments) that closes the source."""
    src = open_data(data, **kwargs)
    try:
        yield src
    finally:
        src.close()


def embedding_keys(key_added: str) -> dict[str, str]:
    """Return the ``obsm`` keys for a ``key_added`` prefix: ``{"rna": f"{key_added}_rna", ...}``.

    Parameters
    ----------
    key_added
        The prefix; ``"X_omicsclip"`` gives :data:`omicsclip.conventions.EMBEDDING_KEYS`.

    Returns
    -------
    dict
        Modality (``rna``, ``prot``, ``joint``) -> ``obsm`` key.
    """
    return {m: f"{key_added}_{m}" for m in _EMBED_SUFFIXES}


def targets(data: Any) -> list[Any]:
    """Return the objects results are written into: the MuData or AnnData itself, or both of a pair."""
    if is_path_input(data):
        return []
    if isinstance(data, tuple | list):
        return [d for d in data if hasattr(d, "obs_names")]
    return [data] if hasattr(data, "obs_names") else []


def _rows(target: Any, barcodes: pd.Index) -> np.ndarray:
    pos = barcodes.get_indexer(pd.Index(target.obs_names.astype(str)))
    return pos


def write_obsm(data: Any, barcodes: pd.Index, key: str, values: np.ndarray) -> None:
    """Write ``values`` (one row per barcode) to ``obsm[key]`` of every target of ``data``, matched by barcode.

    Cells of a target that are not among ``barcodes`` get NaN rows.

    Parameters
    ----------
    data
        What the user passed (see :func:`targets`).
    barcodes
        The rows of ``values``.
    key
        The ``obsm`` key.
    values
        ``(len(barcodes), d)`` array.
    """
    for t in targets(data):
        pos = _rows(t, barcodes)
        out = np.full((len(pos), values.shape[1]), np.nan, dtype=values.dtype)
        out[pos >= 0] = values[pos[pos >= 0]]
        t.obsm[key] = out


def write_obs(data: Any, frame: pd.DataFrame) -> None:
    """Write the columns of ``frame`` (index = barcodes) to ``obs`` of every target of ``data``, by barcode.

    Parameters
    ----------
    data
        What the user passed (see :func:`targets`).
    frame
        One row per cell; cells of a target missing from it get missing values.
    """
    for t in targets(data):
        aligned = frame.reindex(pd.Index(t.obs_names.astype(str)))
        for col in frame.columns:
            t.obs[col] = aligned[col].to_numpy()
