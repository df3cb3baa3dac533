"""Ingest: any supported CITE-seq input -> validated paired zarr store with provenance and a QC summary.

Cells stream from an :class:`~omicsclip.io.readers.InputSource` (files: :func:`omicsclip.io.readers.open_input`;
MuData/AnnData in memory, backed or lazy: :func:`omicsclip.io.anndata_input.open_anndata`) chunk by chunk into
:class:`omicsclip.io.store.StoreWriter` (:func:`ingest_source`, the one ingest loop), so memory is bounded by
``chunk_cells``, not the input size. Input files are hashed (sha256) in a background thread while the counts are
copied; objects in memory are described by type, shape and a sha256 of their obs/var names
(:func:`object_inputs`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import platform
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from omicsclip.errors import InputError
from omicsclip.io.atomic import check_writable
from omicsclip.io.features import DEFAULT_HTO_PATTERNS, DEFAULT_ISOTYPE_PATTERNS
from omicsclip.io.hashing import sha256_tree
from omicsclip.io.qc import QCAccumulator
from omicsclip.io.readers import InputSource, open_input, reader_options
from omicsclip.io.store import StoreWriter

log = logging.getLogger(__name__)

#: Keys of the ``ingest`` section that are not reader options: QC thresholds and the chunk size.
_STORE_KEYS = ("min_counts_rna", "min_counts_prot", "chunk_cells")


def sha256_path(path: Path, cancel: threading.Event | None = None) -> str:
    """Return the sha256 of a file or folder (:func:`omicsclip.io.hashing.sha256_tree`).

    Parameters
    ----------
    path
        The input file or folder.
    cancel
        Stops early when set.

    Returns
    -------
    str
        The hex digest (``""`` when cancelled).

    Raises
    ------
    InputError
        The input cannot be read.
    """
    try:
        return sha256_tree(path, cancel)
    except OSError as exc:
        raise InputError(f"{path}: cannot read for hashing ({exc.strerror or exc})") from None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _is_paths(inputs: Any) -> bool:
    return isinstance(inputs, list | tuple) and all(isinstance(p, str | Path) for p in inputs)


#: How an in-memory source's ``fmt`` is named in messages.
_OBJECT_KINDS = {"anndata": "AnnData", "mudata": "MuData", "anndata-pair": "(rna, prot) pair of AnnData"}


def source_name(src: InputSource) -> str:
    """Name a source in messages: its files, or the kind of object it reads in memory.

    Parameters
    ----------
    src
        An open source.

    Returns
    -------
    str
        E.g. ``"pbmc.h5ad"`` or ``"the in-memory MuData"``.
    """
    if src.files:
        return ", ".join(map(str, src.files))
    return f"the in-memory {_OBJECT_KINDS.get(src.fmt, src.fmt)}"


def _names_sha256(names: Any) -> str:
    """sha256 of the names, one per line (UTF-8, each followed by a newline)."""
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\n".encode())
    return h.hexdigest()


def _describe(obj: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"object": type(obj).__name__, "n_obs": int(obj.n_obs), "n_vars": int(obj.n_vars),
                         "obs_names_sha256": _names_sha256(obj.obs_names),
                         "var_names_sha256": _names_sha256(obj.var_names)}
    if getattr(obj, "isbacked", False) and getattr(obj, "filename", None):
        d["backed_file"] = str(Path(obj.filename).resolve())
    if hasattr(obj, "mod"):
        d["modalities"] = {str(m): {"n_obs": int(a.n_obs), "n_vars": int(a.n_vars),
                                    "var_names_sha256": _names_sha256(a.var_names)} for m, a in obj.mod.items()}
    return d


def object_inputs(data: Any) -> dict[str, dict[str, Any]]:
    """Describe data held in memory for a store's provenance (``inputs``), as far as an object can be described.

    Parameters
    ----------
    data
        A MuData, an AnnData, or an ``(rna, prot)`` pair of AnnData (in memory, backed or lazy).

    Returns
    -------
    dict
        ``input_0`` (and ``input_1`` for a pair): ``object`` (the type's name), ``n_obs``, ``n_vars``,
        ``obs_names_sha256`` and ``var_names_sha256`` (sha256 of the names, one per line), ``backed_file`` for a
        backed object, and per modality of a MuData its ``n_obs``, ``n_vars`` and ``var_names_sha256``. There is
        no file to hash: the counts themselves are not fingerprinted.
    """
    objs = list(data) if isinstance(data, list | tuple) else [data]
    return {f"input_{i}": _describe(obj) for i, obj in enumerate(objs)}


def _file_inputs(src: InputSource, hashes: list[Future]) -> dict[str, dict[str, Any]]:
    return {f"input_{i}": {"path": str(Path(p).resolve()), "sha256": fut.result(), "bytes": _size(Path(p))}
            for i, (p, fut) in enumerate(zip(src.files, hashes, strict=True))}


def _provenance(src: InputSource, inputs: Mapping[str, Any], options: Mapping[str, Any], integer: bool,
                seconds: float) -> dict[str, Any]:
    from importlib.metadata import version

    from omicsclip import __version__

    return {
        "tool": "omicsclip",
        "version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "format": src.fmt,
        "inputs": dict(inputs),
        "options": dict(options),
        "allow_normalized": bool(options.get("allow_normalized", False)),
        "integer_counts": bool(integer),
        "isotypes_removed": [] if options.get("keep_isotypes") else list(src.info["isotypes"]),
        "hashtags": list(src.info["htos"]),
        "notes": list(src.info["notes"]),
        "seconds": round(seconds, 3),
        "python": platform.python_version(),
        "anndata": version("anndata"),
        "zarr": version("zarr"),
    }


def ingest_source(src: InputSource, out: str | Path, *, options: Mapping[str, Any],
                  inputs: Mapping[str, Any] | Callable[[], Mapping[str, Any]], overwrite: bool = False,
                  progress: bool | None = None) -> dict[str, Any]:
    """Write the cells of an open source to a new paired store: QC filter, append chunk by chunk, provenance.

    The one ingest loop: :func:`ingest` runs it on files and data in memory alike.

    Parameters
    ----------
    src
        The cells, both modalities (:func:`~omicsclip.io.readers.open_input`,
        :func:`~omicsclip.io.anndata_input.open_anndata`).
    out
        The store to create (``*.zarr``); check it first with :func:`omicsclip.io.atomic.check_writable`.
    options
        The ingest options, recorded in ``uns["provenance"]["options"]``; ``min_counts_rna``,
        ``min_counts_prot`` (QC: drop cells with fewer total counts in that modality) and ``chunk_cells`` (cells
        per chunk, the memory bound) are required, ``keep_isotypes`` and ``allow_normalized`` are read. The
        source's ``info["protein_names"]`` (harmonised names) goes to ``uns["protein_names"]``.
    inputs
        ``uns["provenance"]["inputs"]``: what the cells came from (file hashes, :func:`object_inputs`), or a
        function returning it, called after the last chunk (e.g. to wait for hashes computed meanwhile).
    overwrite
        Replace an existing store.
    progress
        Show a progress bar (``None``: only on a terminal).

    Returns
    -------
    dict
        The QC summary written to ``uns["qc"]`` (with the input table sizes).
    """
    out = Path(out)
    name = source_name(src)
    t0 = time.perf_counter()
    log.info("ingest %s (%s): %d cells, %d genes, %d proteins", name, src.fmt, src.n_cells, len(src.genes),
             len(src.proteins))
    sizes = src.table_sizes()
    qc = QCAccumulator(len(src.genes), len(src.proteins), min_counts_rna=options["min_counts_rna"],
                       min_counts_prot=options["min_counts_prot"])
    integer = True
    with StoreWriter(out, genes=src.gene_frame, proteins=src.protein_frame, overwrite=overwrite) as w, \
            closing(_progress(src, int(options["chunk_cells"]), progress)) as chunks:
        for chunk in chunks:
            if src.allow_normalized and integer:
                integer = bool(np.all(chunk.rna.data == np.rint(chunk.rna.data))
                               and np.all(chunk.prot == np.rint(chunk.prot)))
            rna, prot, obs = qc.filter(chunk.rna, chunk.prot, chunk.obs)
            if len(obs):
                w.append(rna, prot, obs)
        _check_result(src, qc, out)
        summary = {**qc.summary(), **sizes}
        genes, proteins = qc.feature_frames(w.genes, w.proteins)
        prov = _provenance(src, inputs() if callable(inputs) else inputs, options, integer,
                           time.perf_counter() - t0)
        uns = {"provenance": prov, "qc": summary}
        if "protein_names" in src.info:
            uns["protein_names"] = src.info["protein_names"]
        w.close(uns=uns, genes=genes, proteins=proteins)
    dt = time.perf_counter() - t0
    log.info("wrote %s: %d cells x %d genes x %d proteins in %.1f s (%.0f cells/s)", out, summary["n_cells"],
             summary["n_genes"], summary["n_proteins"], dt, summary["n_cells_paired"] / max(dt, 1e-9))
    return summary


def ingest(inputs: Sequence[str | Path] | Any, out: str | Path, *, fmt: str = "auto", rna_modality: str = "rna",
           prot_modality: str = "prot", isotype_patterns: Sequence[str] = DEFAULT_ISOTYPE_PATTERNS,
           keep_isotypes: bool = False, hto_patterns: Sequence[str] = DEFAULT_HTO_PATTERNS,
           pairing: str = "strict", allow_normalized: bool = False, genes_in_rows: bool = False,
           make_unique: bool = False, protein_key: str | None = None, layer: str | None = None,
           harmonise_proteins: bool = True, protein_aliases: str | Path | Mapping[str, str] | None = None,
           min_counts_rna: float = 0,
           min_counts_prot: float = 0, chunk_cells: int = 10_000, overwrite: bool = False,
           progress: bool | None = None) -> Path:
    """Read ``inputs`` (files or data in memory) and write the paired store ``out`` (:func:`ingest_source`).

    Parameters
    ----------
    inputs
        One or two paths (RNA then protein for two; see :func:`omicsclip.io.readers.open_input`), or data in
        memory, backed or lazy: a MuData, an AnnData with protein in ``obsm`` or an ``(rna, prot)`` pair of
        AnnData (see :func:`omicsclip.io.anndata_input.open_anndata`; recorded by :func:`object_inputs`).
    out
        The store to create (``*.zarr``); refused if it exists unless ``overwrite``.
    fmt, rna_modality, prot_modality, isotype_patterns, keep_isotypes, hto_patterns, pairing,
    allow_normalized, genes_in_rows, make_unique, protein_key, layer
        As in :func:`~omicsclip.io.readers.open_input` (``fmt`` and ``genes_in_rows`` apply to files only).
    harmonise_proteins, protein_aliases
        Store canonical protein names (:mod:`omicsclip.io.protein_names`; the input's names in the protein
        frame's ``original_name``, what was mapped in ``uns["protein_names"]``), with a user mapping file (or
        dict) overriding the shipped alias table.
    min_counts_rna, min_counts_prot
        QC: drop cells with fewer total counts in that modality.
    chunk_cells
        Cells per chunk (memory bound).
    progress
        Show a progress bar (``None``: only on a terminal).

    Returns
    -------
    Path
        ``out``; nothing is left behind on error.
    """
    out = Path(out)
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    files = _is_paths(inputs)
    check_writable(out, overwrite=overwrite, inputs=inputs if files else ())
    reader = {"rna_modality": rna_modality, "prot_modality": prot_modality,
              "isotype_patterns": list(isotype_patterns), "keep_isotypes": bool(keep_isotypes),
              "hto_patterns": list(hto_patterns), "pairing": pairing, "allow_normalized": bool(allow_normalized),
              "make_unique": bool(make_unique), "harmonise_proteins": bool(harmonise_proteins),
              "protein_aliases": protein_aliases or None}
    options = {"fmt": fmt, **reader, "protein_aliases": _aliases_label(protein_aliases),
               "genes_in_rows": bool(genes_in_rows), "protein_key": protein_key or "",
               "layer": layer or "", "min_counts_rna": float(min_counts_rna),
               "min_counts_prot": float(min_counts_prot), "chunk_cells": int(chunk_cells)}
    if not files:
        del options["fmt"], options["genes_in_rows"]  # file-only
        from omicsclip.io.anndata_input import open_anndata

        with open_anndata(inputs, require="both", protein_key=protein_key, layer=layer, **reader) as src:
            ingest_source(src, out, options=options, inputs=object_inputs(inputs), overwrite=overwrite,
                          progress=progress)
        return out
    with open_input(inputs, fmt, require="both", genes_in_rows=genes_in_rows, protein_key=protein_key,
                    layer=layer, **reader) as src, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
        cancel = threading.Event()
        hashes = [pool.submit(sha256_path, Path(p), cancel) for p in src.files]
        try:
            ingest_source(src, out, options=options, inputs=lambda: _file_inputs(src, hashes),
                          overwrite=overwrite, progress=progress)
        except BaseException:
            cancel.set()
            raise
    return out


def _aliases_label(aliases: str | Path | Mapping[str, str] | None) -> str:
    """How the provenance records a user protein mapping: its path, or its size when given in memory."""
    if isinstance(aliases, Mapping):
        return f"{len(aliases)} names given in memory"
    return str(aliases or "")


def _progress(src: InputSource, chunk_cells: int, progress: bool | None):
    from tqdm.auto import tqdm

    bar = tqdm(total=src.n_cells, unit="cells", desc="ingest", disable=None if progress is None else not progress,
               leave=False)
    try:
        for chunk in src.iter_chunks(chunk_cells):
            yield chunk
            bar.update(chunk.n_cells)
    finally:
        bar.close()


def _check_result(src: InputSource, qc: QCAccumulator, out: Path) -> None:
    where = source_name(src)
    if qc.n_kept == 0:
        raise InputError(f"{out}: no cells left after QC (min_counts_rna={qc.min_counts_rna:g} dropped "
                         f"{qc.dropped_rna}, min_counts_prot={qc.min_counts_prot:g} dropped {qc.dropped_prot})")
    if qc.gene_counts.sum() == 0:
        raise InputError(f"{where}: all RNA counts are zero (empty matrix)")
    if qc.prot_counts.sum() == 0:
        raise InputError(f"{where}: all protein counts are zero (empty matrix)")


def ingest_from_config(inputs: Sequence[str | Path] | Any, out: str | Path, section: Mapping[str, Any], *,
                       fmt: str = "auto", overwrite: bool = False, **overrides: Any) -> Path:
    """Run :func:`ingest` with options from the config's ``ingest`` section.

    Parameters
    ----------
    inputs, out, fmt, overwrite
        As in :func:`ingest`: paths, or data in memory.
    section
        The ``ingest:`` config section: reader options (:func:`omicsclip.io.readers.reader_options`) plus
        ``min_counts_rna``, ``min_counts_prot`` and ``chunk_cells``.
    **overrides
        Options that win over the section unless ``None`` (the command line's flags).

    Returns
    -------
    Path
        ``out``.
    """
    opts = {**reader_options(section), **{k: section[k] for k in _STORE_KEYS if k in section}}
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return ingest(inputs, out, fmt=fmt, overwrite=overwrite, **opts)
