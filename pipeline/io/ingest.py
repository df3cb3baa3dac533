"""Ingest: any supported CITE-seq input -> validated paired zarr store with provenance and a QC summary.

Cells stream from :func:`omicsclip.io.readers.open_input` chunk by chunk into
:class:`omicsclip.io.store.StoreWriter`, so memory is bounded by ``chunk_cells``, not the input size. Input files
are hashed (sha256) in a background thread while the counts are copied.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import threading
import time
from collections.abc import Mapping, Sequence
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


def _provenance(src: InputSource, hashes: list[Future], options: dict[str, Any], integer: bool,
                seconds: float) -> dict[str, Any]:
    from importlib.metadata import version

    from omicsclip import __version__

    inputs = {}
    for i, (p, fut) in enumerate(zip(src.files, hashes, strict=True)):
        inputs[f"input_{i}"] = {"path": str(Path(p).resolve()), "sha256": fut.result(), "bytes": _size(Path(p))}
    return {
        "tool": "omicsclip",
        "version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "format": src.fmt,
        "inputs": inputs,
        "options": options,
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


def ingest(inputs: Sequence[str | Path], out: str | Path, *, fmt: str = "auto", rna_modality: str = "rna",
           prot_modality: str = "prot", isotype_patterns: Sequence[str] = DEFAULT_ISOTYPE_PATTERNS,
           keep_isotypes: bool = False, hto_patterns: Sequence[str] = DEFAULT_HTO_PATTERNS,
           pairing: str = "strict", allow_normalized: bool = False, genes_in_rows: bool = False,
           make_unique: bool = False, protein_key: str | None = None, layer: str | None = None,
           min_counts_rna: float = 0,
           min_counts_prot: float = 0, chunk_cells: int = 10_000, overwrite: bool = False,
           progress: bool | None = None) -> Path:
    """Read ``inputs`` (see :func:`omicsclip.io.readers.open_input`) and write the paired store ``out``.

    Parameters
    ----------
    inputs
        One or two paths (RNA then protein for two).
    out
        The store to create (``*.zarr``); refused if it exists unless ``overwrite``.
    fmt, rna_modality, prot_modality, isotype_patterns, keep_isotypes, hto_patterns, pairing,
    allow_normalized, genes_in_rows, make_unique, protein_key, layer
        As in :func:`~omicsclip.io.readers.open_input`.
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
    check_writable(out, overwrite=overwrite, inputs=inputs)
    options = {"fmt": fmt, "rna_modality": rna_modality, "prot_modality": prot_modality,
               "isotype_patterns": list(isotype_patterns), "keep_isotypes": bool(keep_isotypes),
               "hto_patterns": list(hto_patterns), "pairing": pairing, "allow_normalized": bool(allow_normalized),
               "genes_in_rows": bool(genes_in_rows), "make_unique": bool(make_unique),
               "protein_key": protein_key or "", "layer": layer or "", "min_counts_rna": float(min_counts_rna),
               "min_counts_prot": float(min_counts_prot), "chunk_cells": int(chunk_cells)}
    t0 = time.perf_counter()
    with open_input(inputs, fmt, rna_modality=rna_modality, prot_modality=prot_modality,
                    isotype_patterns=isotype_patterns, keep_isotypes=keep_isotypes, hto_patterns=hto_patterns,
                    pairing=pairing, allow_normalized=allow_normalized, require="both",
                    genes_in_rows=genes_in_rows, make_unique=make_unique, protein_key=protein_key,
                    layer=layer) as src, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool:
        cancel = threading.Event()
        hashes = [pool.submit(sha256_path, Path(p), cancel) for p in src.files]
        log.info("ingest %s (%s): %d cells, %d genes, %d proteins", ", ".join(map(str, src.files)), src.fmt,
                 src.n_cells, len(src.genes), len(src.proteins))
        sizes = src.table_sizes()
        qc = QCAccumulator(len(src.genes), len(src.proteins), min_counts_rna=min_counts_rna,
                           min_counts_prot=min_counts_prot)
        integer = True
        try:
            with StoreWriter(out, genes=src.gene_frame, proteins=src.protein_frame, overwrite=overwrite) as w, \
                    closing(_progress(src, chunk_cells, progress)) as chunks:
                for chunk in chunks:
                    if allow_normalized and integer:
                        integer = bool(np.all(chunk.rna.data == np.rint(chunk.rna.data))
                                       and np.all(chunk.prot == np.rint(chunk.prot)))
                    rna, prot, obs = qc.filter(chunk.rna, chunk.prot, chunk.obs)
                    if len(obs):
                        w.append(rna, prot, obs)
                _check_result(src, qc, out)
                summary = {**qc.summary(), **sizes}
                genes, proteins = qc.feature_frames(w.genes, w.proteins)
                prov = _provenance(src, hashes, options, integer, time.perf_counter() - t0)
                w.close(uns={"provenance": prov, "qc": summary}, genes=genes, proteins=proteins)
        except BaseException:
            cancel.set()
            raise
    dt = time.perf_counter() - t0
    log.info("wrote %s: %d cells x %d genes x %d proteins in %.1f s (%.0f cells/s)", out, summary["n_cells"],
             summary["n_genes"], summary["n_proteins"], dt, summary["n_cells_paired"] / max(dt, 1e-9))
    return out


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
    where = src.files[0]
    if qc.n_kept == 0:
        raise InputError(f"{out}: no cells left after QC (min_counts_rna={qc.min_counts_rna:g} dropped "
                         f"{qc.dropped_rna}, min_counts_prot={qc.min_counts_prot:g} dropped {qc.dropped_prot})")
    if qc.gene_counts.sum() == 0:
        raise InputError(f"{where}: all RNA counts are zero (empty matrix)")
    if qc.prot_counts.sum() == 0:
        raise InputError(f"{where}: all protein counts are zero (empty matrix)")


def ingest_from_config(inputs: Sequence[str | Path], out: str | Path, section: Mapping[str, Any], *,
                       fmt: str = "auto", overwrite: bool = False, **overrides: Any) -> Path:
    """Run :func:`ingest` with options from the config's ``ingest`` section.

    Parameters
    ----------
    inputs, out, fmt, overwrite
        As in :func:`ingest`.
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
