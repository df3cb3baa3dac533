"""Query new cells against a reference index: cross-modal neighbours, imputed protein, transferred labels.

New cells come in any ingest format with RNA, protein or both. They are preprocessed with the model's saved
state and embedded (:meth:`omicsclip.model.modelio.TrainedModel.embed`), then every query modality searches every
reference index (RNA -> protein and protein -> RNA across modalities, plus the same-modality direction).
For RNA-only queries the reference protein of the nearest neighbours gives an imputed protein profile (softmax-
weighted mean of CLR values) and a per-cell confidence; reference labels are transferred by weighted votes
(reference cells labelled with an ``evaluate.ignore_labels`` value do not vote; a cell none of whose neighbours
votes gets an empty label). Every cell gets a calibrated ``mapping_score`` in (0, 1] (low: unlike any reference
cell, e.g. a type absent from the reference; :mod:`omicsclip.index.mapping_score`) and an ``out_of_reference``
flag (``mapping_score <= query.ood_alpha``).

Two entry points share one engine: :func:`query` returns everything in memory (a Python API for moderate
inputs), :func:`run_query` streams chunks of cells into ``RESULTS_DIR`` with bounded memory and writes the folder
atomically. The pieces live beside this driver: :mod:`omicsclip.index.matching` (feature checks),
:mod:`omicsclip.index.query_input` (where cells come from), :mod:`omicsclip.index.engine` (one chunk: embed,
search, impute, vote) and :mod:`omicsclip.index.query_writers` (incremental output files).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError
from omicsclip.index.engine import ChunkResult, QueryEngine, QuerySettings
from omicsclip.index.matching import check_features
from omicsclip.index.query_input import open_query_input
from omicsclip.index.query_writers import H5adAppender, TableWriter
from omicsclip.index.reference import ReferenceIndex
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import write_json
from omicsclip.progress import Progress, peak_rss_mb

log = logging.getLogger(__name__)


@dataclass
class QueryResult:
    """In-memory results of :func:`query` (the same content :func:`run_query` writes to files).

    Attributes
    ----------
    neighbours
        One row per (query cell, direction, rank): ``query_id, query_modality, index_modality, rank,
        reference_id, similarity``.
    imputed
        AnnData of imputed CLR protein (obs ``confidence``, ``top_similarity``) for RNA-only queries, else None.
    labels
        Per query cell: transferred label (empty when no neighbour votes), its vote fraction and the fraction of
        every class, or None.
    cells
        Per query cell: ``query_id, query_modality, mapping_similarity`` (similarity of the ``index.mapping_k``-th
        nearest reference cell in the query modality's index), ``mapping_score`` and ``out_of_reference``; None for an
        index without a mapping calibration (built by an older omicsclip).
    summary
        What was done (counts, feature matching, settings, timings).
    """

    neighbours: pd.DataFrame
    imputed: Any | None
    labels: pd.DataFrame | None
    cells: pd.DataFrame | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet(logger_names: Sequence[str]) -> Iterator[None]:
    """Silence per-chunk warnings (feature matching is reported once, up front)."""
    loggers = [logging.getLogger(n) for n in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _iter_results(src: Any, engine: QueryEngine, chunk_cells: int) -> Iterator[ChunkResult]:
    n = int(src.n_cells)
    if n == 0:
        raise InputError("query input has no cells")
    progress = Progress(n, "query", "cells", logger=log)
    with _quiet(["omicsclip.model.alignment", "omicsclip.model.modelio"]), progress:
        for chunk in src.iter_chunks(chunk_cells):
            if chunk.rna is None and chunk.prot is None:
                raise InputError("query input has neither RNA nor protein counts")
            result = engine.process(chunk, src.genes, src.proteins)
            progress.update(chunk.n_cells)
            yield result


def _load(model: Any, index: Any, *, device: str, use_gpu: bool | str) -> tuple[Any, ReferenceIndex]:
    if isinstance(model, str | Path):
        from omicsclip.model.device import resolve_device
        from omicsclip.model.modelio import load_model

        model_name = str(model)
        model = load_model(model, resolve_device(device))
    else:
        model_name = "the given model"
    if not isinstance(index, ReferenceIndex):
        index = ReferenceIndex.load(index, model_fingerprint=model.fingerprint, use_gpu=use_gpu,
                                    model_name=model_name)
    return model, index


def _summary(src: Any, engine: QueryEngine, report: dict[str, Any], n: int, seconds: float) -> dict[str, Any]:
    s = engine.settings
    has = [m for m, names in (("rna", src.genes), ("prot", src.proteins)) if names is not None]
    primary = "rna" if "rna" in has else "prot"
    return {
        "n_query_cells": n,
        "query_modalities": has,
        "directions": [f"{q}->{i}" for q in has for i in engine.ref.modalities],
        # what was used: a reference smaller than k gives every cell all of its cells
        "k": min(s.k, engine.ref.n), "k_requested": s.k, "impute_k": min(s.impute_k, engine.ref.n),
        "temperature": s.temperature, "transfer_from": s.transfer_from,
        "transfer_direction": f"{primary}->{engine.transfer_modality(primary)}",
        "chunk_cells": s.chunk_cells,
        "imputed_protein": has == ["rna"] and engine.ref.protein is not None,
        # a pooled reference: the dataset each shared protein is imputed from (index.protein_sources)
        "protein_sources": (engine.ref.meta.get("source", {}).get("protein_sources") or {}).get("sources"),
        "label_keys": list(engine.label_classes),
        "ignore_labels": list(s.ignore_labels),
        "mapping": None if engine.ref.mapping is None else {
            **{k: v for k, v in engine.ref.meta.get("mapping", {}).items() if k != "file"},
            "modality": primary, "ood_alpha": s.ood_alpha},
        "feature_matching": report,
        "model_fingerprint": str(engine.model.fingerprint),
        "index": {"path": str(engine.ref.path), "kind": engine.ref.meta["kind"],
                  "factory": engine.ref.meta["factory"], "n": engine.ref.n, "dim": engine.ref.dim},
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


# ------------------------------------------------------------------------------------------------- the API


def query(inputs: Any, model: Any, index: Any, *, k: int | None = None, section: Mapping[str, Any] | None = None,
          fmt: str = "auto", modality: str | None = None, ingest: Mapping[str, Any] | None = None,
          device: str = "cpu", use_gpu: bool | str = "auto",
          ignore_labels: Sequence[str] | None = None) -> QueryResult:
    """Look up new cells in a reference and return neighbours, imputed protein and labels in memory.

    Parameters
    ----------
    inputs
        Query cells: a path or two (any ingest format; RNA, protein or both), an open input source, or a
        :class:`~omicsclip.io.paired.PairedData` (``rna`` or ``prot`` may be ``None``).
    model
        Model folder or loaded :class:`~omicsclip.model.modelio.TrainedModel`.
    index
        Index folder (``omicsclip index``) or loaded :class:`~omicsclip.index.reference.ReferenceIndex`.
    k
        Neighbours per query cell and direction (overrides ``section["k"]``).
    section
        The ``query:`` config section.
    fmt, modality, ingest
        How to read path inputs (see :func:`omicsclip.io.readers.open_input`; ``ingest`` = config section).
    device, use_gpu
        Where to run the encoders; whether to search on a GPU (``auto``: when faiss sees one).
    ignore_labels
        Reference labels never transferred (``evaluate.ignore_labels``; default: the shipped config's).

    Returns
    -------
    QueryResult
        The same tables :func:`run_query` writes.
    """
    t0 = time.perf_counter()
    settings = QuerySettings.from_section(section, k=k, ignore_labels=ignore_labels)
    model, ref = _load(model, index, device=device, use_gpu=use_gpu)
    src = open_query_input(inputs, fmt=fmt, modality=modality, ingest=ingest, model_proteins=model.proteins)
    try:
        report = check_features(src.genes, src.proteins, model)
        engine = QueryEngine(model, ref, settings)
        parts = list(_iter_results(src, engine, settings.chunk_cells))
    finally:
        src.close()
    neighbours = pd.concat([p.neighbours for p in parts], ignore_index=True)
    labels = pd.concat([p.labels for p in parts], ignore_index=True) if parts[0].labels is not None else None
    cells = pd.concat([p.cells for p in parts], ignore_index=True) if parts[0].cells is not None else None
    imputed = None
    if parts[0].imputed is not None:
        import anndata as ad

        ids = [i for p in parts for i in p.ids]
        obs = pd.DataFrame({"confidence": np.concatenate([p.confidence for p in parts]),
                            "top_similarity": np.concatenate([p.top_similarity for p in parts])},
                           index=pd.Index(ids))
        imputed = ad.AnnData(X=np.concatenate([p.imputed for p in parts]), obs=obs,
                             var=pd.DataFrame(index=pd.Index(ref.protein_names)))
    summary = _summary(src, engine, report, sum(len(p.ids) for p in parts), time.perf_counter() - t0)
    return QueryResult(neighbours=neighbours, imputed=imputed, labels=labels, cells=cells, summary=summary)


def run_query(inputs: Any, model: Any, index: Any, out_dir: str | Path, *, k: int | None = None,
              section: Mapping[str, Any] | None = None, fmt: str = "auto", modality: str | None = None,
              ingest: Mapping[str, Any] | None = None, device: str = "cpu", use_gpu: bool | str = "auto",
              ignore_labels: Sequence[str] | None = None, tsv: bool = True, overwrite: bool = False
              ) -> dict[str, Any]:
    """Stream query cells through the model and index, writing ``RESULTS_DIR`` atomically.

    Writes ``neighbours.parquet`` and ``neighbours.tsv`` (every direction), ``imputed_protein.h5ad``
    (RNA-only queries with a reference protein), ``labels.tsv`` (when the reference has labels), ``mapping.tsv``
    (per cell: ``mapping_similarity``, ``mapping_score``, ``out_of_reference``; when the index has a mapping
    calibration) and ``summary.json``. Memory is bounded by ``chunk_cells`` whatever the number of query cells.

    Parameters
    ----------
    inputs, model, index, k, section, fmt, modality, ingest, device, use_gpu, ignore_labels
        As in :func:`query`.
    out_dir
        The results folder to create.
    tsv
        Also write the neighbour table as TSV (large for millions of cells).
    overwrite
        Replace an existing results folder.

    Returns
    -------
    dict
        The summary also written to ``summary.json``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    settings = QuerySettings.from_section(section, k=k, ignore_labels=ignore_labels)
    given = [x for x in (*(inputs if isinstance(inputs, list | tuple) else [inputs]), model, index)
             if isinstance(x, str | Path)]
    with atomic_path(out_dir, overwrite=overwrite, inputs=given) as tmp:
        model, ref = _load(model, index, device=device, use_gpu=use_gpu)
        src = open_query_input(inputs, fmt=fmt, modality=modality, ingest=ingest, model_proteins=model.proteins)
        try:
            report = check_features(src.genes, src.proteins, model)
            engine = QueryEngine(model, ref, settings)
            tmp.mkdir()
            files, n, conf_sum = _write_results(tmp, src, engine, settings, tsv=tsv)
        finally:
            src.close()
        summary = _summary(src, engine, report, n["cells"], time.perf_counter() - t0)
        summary["n_neighbour_rows"] = n["rows"]
        if n["imputed"]:
            summary["mean_confidence"] = round(conf_sum / n["imputed"], 4)
        if summary["mapping"] is not None:
            summary["mapping"]["n_out_of_reference"] = n["out_of_reference"]
        summary["files"] = sorted([*files, "summary.json"])
        write_json(tmp / "summary.json", summary)
    log.info("query: %d cells -> %s (%.1fs, peak RSS %.0f MB)", n["cells"], out_dir, summary["seconds"],
             summary["peak_rss_mb"])
    return summary


def _write_results(tmp: Path, src: Any, engine: QueryEngine, settings: QuerySettings, *,
                   tsv: bool) -> tuple[list[str], dict[str, int], float]:
    neighbours = TableWriter(tmp / "neighbours", parquet=True, tsv=tsv)
    labels = TableWriter(tmp / "labels", parquet=False, tsv=True)
    cells = TableWriter(tmp / "mapping", parquet=False, tsv=True)
    h5: H5adAppender | None = None
    n = {"cells": 0, "rows": 0, "imputed": 0, "out_of_reference": 0}
    conf_sum = 0.0
    files: list[str] = []
    try:
        for res in _iter_results(src, engine, settings.chunk_cells):
            neighbours.write(res.neighbours)
            if res.labels is not None:
                labels.write(res.labels)
            if res.cells is not None:
                cells.write(res.cells)
                n["out_of_reference"] += int(res.cells["out_of_reference"].sum())
            if res.imputed is not None:
                if h5 is None:
                    h5 = H5adAppender(tmp / "imputed_protein.h5ad", engine.ref.protein_names,
                                      ["confidence", "top_similarity"],
                                      uns={"normalisation": "clr", "impute_k": min(settings.impute_k, engine.ref.n),
                                           "temperature": settings.temperature})
                h5.append(res.ids, res.imputed, {"confidence": res.confidence,
                                                 "top_similarity": res.top_similarity})
                n["imputed"] += len(res.ids)
                conf_sum += float(res.confidence.sum())
            n["cells"] += len(res.ids)
    finally:
        files += neighbours.close() + labels.close() + cells.close()
        if h5 is not None:
            files.append(h5.close())
    n["rows"] = neighbours.n_rows
    if n["cells"] == 0:
        raise InputError("query input has no cells")
    return files, n, conf_sum
