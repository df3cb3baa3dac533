"""Query new cells against a reference index: cross-modal neighbours, imputed protein, transferred labels.

New cells come in any ingest format with RNA, protein or both. They are preprocessed with the model's saved
state and embedded (:meth:`omicsclip.model.modelio.TrainedModel.embed`), then every query modality searches every
reference index (RNA -> protein and protein -> RNA across modalities, plus the same-modality direction).
For RNA-only queries the reference protein of the nearest neighbours gives an imputed protein profile (softmax-
weighted mean of CLR values) and a per-cell confidence; reference labels are transferred by weighted votes.

Two entry points share one engine: :func:`query` returns everything in memory (a Python API for moderate
inputs), :func:`run_query` streams chunks of cells into ``RESULTS_DIR`` with bounded memory and writes the folder
atomically.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import resource
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError
from omicsclip.index.impute import confidence, impute, neighbour_weights, vote
from omicsclip.index.query_writers import H5adAppender, TableWriter
from omicsclip.index.reference import ReferenceIndex
from omicsclip.io.atomic import atomic_path
from omicsclip.io.paired import PairedData

log = logging.getLogger(__name__)

MODALITIES = ("rna", "prot")
_UNLABELLED = {"", "nan", "none", "na", "<na>"}


@dataclass(frozen=True)
class QuerySettings:
    """The ``query:`` config section, resolved.

    Attributes
    ----------
    k
        Neighbours reported per query cell and direction.
    impute_k
        Neighbours used for imputation and label transfer.
    temperature
        Softmax temperature of the neighbour weights (``<= 0``: equal weights).
    transfer_from
        Which reference index gives the neighbours for imputation/labels: ``same`` (query modality's own
        index, e.g. RNA -> RNA) or ``cross`` (the other modality, e.g. RNA -> protein).
    chunk_cells
        Query cells per chunk (bounds memory).
    """

    k: int = 10
    impute_k: int = 20
    temperature: float = 0.05
    transfer_from: str = "same"
    chunk_cells: int = 20_000

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, **overrides: Any) -> QuerySettings:
        """From a ``query:`` config section; keyword overrides that are not ``None`` win."""
        d = {k: v for k, v in dict(section or {}).items() if k in cls.__dataclass_fields__}
        d.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**d)
        if s.k < 1 or s.impute_k < 1 or s.chunk_cells < 1:
            raise InputError(f"query: k, impute_k and chunk_cells must be >= 1 (got {s.k}, {s.impute_k}, "
                             f"{s.chunk_cells})")
        if s.transfer_from not in ("same", "cross"):
            raise InputError(f"query.transfer_from={s.transfer_from!r}: expected 'same' or 'cross'")
        return s


@dataclass
class ChunkResult:
    """Results for one chunk of query cells."""

    ids: list[str]
    neighbours: pd.DataFrame
    imputed: np.ndarray | None = None
    confidence: np.ndarray | None = None
    top_similarity: np.ndarray | None = None
    labels: pd.DataFrame | None = None


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
        Per query cell: transferred label, its vote fraction and the fraction of every class, or None.
    summary
        What was done (counts, feature matching, settings, timings).
    """

    neighbours: pd.DataFrame
    imputed: Any | None
    labels: pd.DataFrame | None
    summary: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- feature checks


def match_report(names: Sequence[str], model_names: Sequence[str]) -> dict[str, Any]:
    """How input features relate to the model's: shared, missing, extra and whether the order differs."""
    names = [str(n) for n in names]
    model_names = [str(n) for n in model_names]
    have = set(names)
    want = set(model_names)
    missing = [n for n in model_names if n not in have]
    extra = [n for n in names if n not in want]
    shared_in_input = [n for n in names if n in want]
    shared_in_model = [n for n in model_names if n in have]
    return {
        "n_input": len(names), "n_model": len(model_names), "n_shared": len(shared_in_model),
        "n_missing": len(missing), "n_extra": len(extra),
        "missing_fraction": len(missing) / max(len(model_names), 1),
        "reordered": shared_in_input != shared_in_model,
        "missing_examples": missing[:10], "extra_examples": extra[:10],
    }


def check_features(genes: Sequence[str] | None, proteins: Sequence[str] | None, model: Any,
                   *, source: str = "query input") -> dict[str, Any]:
    """Match the input's features to the model's by name; refuse before any work is done.

    Raises
    ------
    InputError
        More than the model's ``max_missing_gene_fraction`` of its genes missing, or no protein shared.
    """
    out: dict[str, Any] = {}
    if genes is not None:
        rep = match_report(genes, model.genes)
        limit = float(model.config.get("preprocess", {}).get("max_missing_gene_fraction", 0.2))
        if rep["missing_fraction"] > limit:
            raise InputError(
                f"{source}: lacks {rep['n_missing']} of the model's {rep['n_model']} genes "
                f"({rep['missing_fraction']:.0%} > max_missing_gene_fraction={limit:g}); "
                f"e.g. {', '.join(rep['missing_examples'][:3])}"
            )
        level = logging.WARNING if rep["n_missing"] else logging.INFO
        log.log(level, "%s genes vs model: %d of %d missing (zero-filled), %d extra (ignored), order %s", source,
                rep["n_missing"], rep["n_model"], rep["n_extra"],
                "differs (matched by name)" if rep["reordered"] else "same")
        out["rna"] = rep
    if proteins is not None:
        rep = match_report(proteins, model.proteins)
        if rep["n_shared"] == 0:
            raise InputError(f"{source}: shares no protein with the model (model: "
                             f"{', '.join(model.proteins[:5])}...; input: {', '.join(map(str, proteins[:5]))}...)")
        level = logging.WARNING if rep["n_missing"] else logging.INFO
        log.log(level, "%s proteins vs model: %d of %d missing (zero-filled), %d extra (ignored)", source,
                rep["n_missing"], rep["n_model"], rep["n_extra"])
        out["prot"] = rep
    return out


# ------------------------------------------------------------------------------------------------ the engine


class QueryEngine:
    """Embed chunks of query cells with a model and look them up in a reference index.

    Parameters
    ----------
    model
        A :class:`omicsclip.model.modelio.TrainedModel` (or anything with ``fingerprint``, ``genes``, ``proteins``,
        ``config`` and ``embed``).
    ref
        The loaded reference index (built from the same model).
    settings
        Query settings.
    """

    def __init__(self, model: Any, ref: ReferenceIndex, settings: QuerySettings) -> None:
        if str(model.fingerprint) != ref.fingerprint:
            raise InputError(f"{ref.path}: index was built with model {ref.fingerprint[:16]}, not with this model "
                             f"({str(model.fingerprint)[:16]}); rebuild the index with this model")
        dim = getattr(model, "embed_dim", None)
        if dim is not None and int(dim) != ref.dim:
            raise InputError(f"{ref.path}: index dimension {ref.dim} differs from the model's embedding "
                             f"dimension {dim}")
        self.model = model
        self.ref = ref
        self.settings = settings
        self.label_classes: dict[str, list[str]] = {}
        self._codes: dict[str, np.ndarray] = {}
        if ref.labels is not None:
            for key in ref.labels.columns:
                values = ref.labels[key].astype(str).to_numpy()
                labelled = np.array([v.strip().lower() not in _UNLABELLED for v in values])
                classes = sorted(set(values[labelled].tolist()))
                if classes:
                    self._codes[key] = np.where(labelled, pd.Categorical(values, categories=classes).codes, -1)
                    self.label_classes[key] = classes

    def transfer_modality(self, query_mod: str) -> str:
        """The reference index whose neighbours impute protein and transfer labels for ``query_mod`` queries."""
        other = "prot" if query_mod == "rna" else "rna"
        want = query_mod if self.settings.transfer_from == "same" else other
        return want if want in self.ref.indices else next(iter(self.ref.indices))

    def process(self, chunk: PairedData, genes: Sequence[str] | None,
                proteins: Sequence[str] | None) -> ChunkResult:
        """Embed, search, impute and vote for one chunk of cells."""
        ids = chunk.barcodes
        emb = self.model.embed(rna=chunk.rna, prot=chunk.prot, genes=genes, proteins=proteins)
        s = self.settings
        frames = []
        primary = "rna" if "rna" in emb else "prot"
        transfer = None
        for qm in MODALITIES:
            if qm not in emb:
                continue
            if emb[qm].shape[1] != self.ref.dim:
                raise InputError(f"{self.ref.path}: index dimension {self.ref.dim} differs from the model's "
                                 f"{qm} embedding dimension {emb[qm].shape[1]}")
            for im in self.ref.modalities:
                is_transfer = qm == primary and im == self.transfer_modality(primary)
                k = max(s.k, s.impute_k) if is_transfer else s.k
                sims, pos = self.ref.search(im, emb[qm], k)
                if is_transfer:
                    transfer = (sims[:, :s.impute_k], pos[:, :s.impute_k])
                frames.append(self._neighbour_frame(ids, qm, im, sims[:, :s.k], pos[:, :s.k]))
        table = pd.concat(frames, ignore_index=True)
        # query-major row order (cell, then direction, then rank): the same table whatever the chunking
        order = np.argsort(table.pop("_cell").to_numpy(), kind="stable")
        out = ChunkResult(ids=ids, neighbours=table.iloc[order].reset_index(drop=True))
        if transfer is None:
            return out
        sims, pos = transfer
        valid = pos >= 0
        weights = neighbour_weights(sims, s.temperature, valid)
        if "rna" in emb and "prot" not in emb and self.ref.protein is not None:
            out.imputed = impute(self.ref.protein, np.where(valid, pos, 0), weights)
            out.confidence = confidence(np.where(valid, sims, 0.0), weights)
            out.top_similarity = np.where(valid[:, 0], sims[:, 0], np.nan).astype(np.float32)
        if self._codes:
            lab = pd.DataFrame({"query_id": ids, "query_modality": primary})
            for key, classes in self.label_classes.items():
                frac = vote(self._codes[key], len(classes), np.where(valid, pos, 0), weights)
                best = frac.argmax(axis=1)
                top = frac[np.arange(len(best)), best]
                lab[key] = np.where(top > 0, np.asarray(classes, dtype=object)[best], "")
                lab[f"{key}_vote_fraction"] = top
                for j, c in enumerate(classes):
                    lab[f"{key}_fraction_{c}"] = frac[:, j]
            out.labels = lab
        return out

    def _neighbour_frame(self, ids: Sequence[str], qm: str, im: str, sims: np.ndarray,
                         pos: np.ndarray) -> pd.DataFrame:
        n, k = pos.shape
        keep = (pos >= 0).ravel()
        return pd.DataFrame({
            "_cell": np.repeat(np.arange(n), k)[keep],
            "query_id": np.repeat(np.asarray(ids, dtype=object), k)[keep],
            "query_modality": qm,
            "index_modality": im,
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep],
            "reference_id": self.ref.cell_ids[pos.ravel()[keep]],
            "similarity": sims.ravel()[keep].astype(np.float32),
        })


# ------------------------------------------------------------------------------------------------- sources


class _PairedSource:
    """In-memory :class:`PairedData` presented like an ``InputSource``."""

    def __init__(self, data: PairedData) -> None:
        self.data = data
        self.genes = data.gene_names if data.rna is not None else None
        self.proteins = data.protein_names if data.prot is not None else None
        self.n_cells = data.n_cells

    def iter_chunks(self, chunk_cells: int) -> Iterator[PairedData]:
        for start in range(0, self.n_cells, chunk_cells):
            yield self.data.subset(slice(start, start + chunk_cells))

    def close(self) -> None:
        pass


class _Borrowed:
    """A caller's open input source: used, but left open for the caller to close."""

    def __init__(self, src: Any) -> None:
        self._src = src
        self.genes, self.proteins, self.n_cells = src.genes, src.proteins, src.n_cells

    def iter_chunks(self, chunk_cells: int) -> Iterator[PairedData]:
        return self._src.iter_chunks(chunk_cells)

    def close(self) -> None:
        pass


def open_query_input(inputs: Any, *, fmt: str = "auto", modality: str | None = None,
                     ingest: Mapping[str, Any] | None = None) -> Any:
    """An input source over query cells: paths (any ingest format, one modality or both), a PairedData, or an
    already open source (anything with ``genes``, ``proteins``, ``n_cells`` and ``iter_chunks``)."""
    if isinstance(inputs, PairedData):
        return _PairedSource(inputs)
    if hasattr(inputs, "iter_chunks"):
        return _Borrowed(inputs)
    from omicsclip.io.readers import open_input

    paths = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    accepted = set(inspect.signature(open_input).parameters) - {"inputs", "fmt", "require", "modality"}
    kw = {k: v for k, v in dict(ingest or {}).items() if k in accepted}
    for key in ("protein_key", "layer"):  # "" in the config means "not set"
        kw[key] = kw.get(key) or None
    return open_input(paths, fmt, require="any", modality=modality, **kw)


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
    from tqdm.auto import tqdm

    n = int(src.n_cells)
    if n == 0:
        raise InputError("query input has no cells")
    bar = tqdm(total=n, unit="cell", desc="query", disable=not sys.stderr.isatty())
    with _quiet(["omicsclip.model.preprocess", "omicsclip.model.modelio"]), bar:
        for chunk in src.iter_chunks(chunk_cells):
            if chunk.rna is None and chunk.prot is None:
                raise InputError("query input has neither RNA nor protein counts")
            yield engine.process(chunk, src.genes, src.proteins)
            bar.update(chunk.n_cells)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
        "label_keys": list(engine.label_classes),
        "feature_matching": report,
        "model_fingerprint": str(engine.model.fingerprint),
        "index": {"path": str(engine.ref.path), "kind": engine.ref.meta["kind"],
                  "factory": engine.ref.meta["factory"], "n": engine.ref.n, "dim": engine.ref.dim},
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


# ------------------------------------------------------------------------------------------------- the API


def query(inputs: Any, model: Any, index: Any, *, k: int | None = None, section: Mapping[str, Any] | None = None,
          fmt: str = "auto", modality: str | None = None, ingest: Mapping[str, Any] | None = None,
          device: str = "cpu", use_gpu: bool | str = "auto") -> QueryResult:
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

    Returns
    -------
    QueryResult
        The same tables :func:`run_query` writes.
    """
    t0 = time.perf_counter()
    settings = QuerySettings.from_section(section, k=k)
    model, ref = _load(model, index, device=device, use_gpu=use_gpu)
    src = open_query_input(inputs, fmt=fmt, modality=modality, ingest=ingest)
    try:
        report = check_features(src.genes, src.proteins, model)
        engine = QueryEngine(model, ref, settings)
        parts = list(_iter_results(src, engine, settings.chunk_cells))
    finally:
        src.close()
    neighbours = pd.concat([p.neighbours for p in parts], ignore_index=True)
    labels = pd.concat([p.labels for p in parts], ignore_index=True) if parts[0].labels is not None else None
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
    return QueryResult(neighbours=neighbours, imputed=imputed, labels=labels, summary=summary)


def run_query(inputs: Any, model: Any, index: Any, out_dir: str | Path, *, k: int | None = None,
              section: Mapping[str, Any] | None = None, fmt: str = "auto", modality: str | None = None,
              ingest: Mapping[str, Any] | None = None, device: str = "cpu", use_gpu: bool | str = "auto",
              tsv: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Stream query cells through the model and index, writing ``RESULTS_DIR`` atomically.

    Writes ``neighbours.parquet`` and ``neighbours.tsv`` (every direction), ``imputed_protein.h5ad``
    (RNA-only queries with a reference protein), ``labels.tsv`` (when the reference has labels) and
    ``summary.json``. Memory is bounded by ``chunk_cells`` whatever the number of query cells.

    Parameters
    ----------
    inputs, model, index, k, section, fmt, modality, ingest, device, use_gpu
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
    settings = QuerySettings.from_section(section, k=k)
    given = [x for x in (*(inputs if isinstance(inputs, list | tuple) else [inputs]), model, index)
             if isinstance(x, str | Path)]
    with atomic_path(out_dir, overwrite=overwrite, inputs=given) as tmp:
        model, ref = _load(model, index, device=device, use_gpu=use_gpu)
        src = open_query_input(inputs, fmt=fmt, modality=modality, ingest=ingest)
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
        summary["files"] = sorted([*files, "summary.json"])
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("query: %d cells -> %s (%.1fs, peak RSS %.0f MB)", n["cells"], out_dir, summary["seconds"],
             summary["peak_rss_mb"])
    return summary


def _write_results(tmp: Path, src: Any, engine: QueryEngine, settings: QuerySettings, *,
                   tsv: bool) -> tuple[list[str], dict[str, int], float]:
    neighbours = TableWriter(tmp / "neighbours", parquet=True, tsv=tsv)
    labels = TableWriter(tmp / "labels", parquet=False, tsv=True)
    h5: H5adAppender | None = None
    n = {"cells": 0, "rows": 0, "imputed": 0}
    conf_sum = 0.0
    files: list[str] = []
    try:
        for res in _iter_results(src, engine, settings.chunk_cells):
            neighbours.write(res.neighbours)
            if res.labels is not None:
                labels.write(res.labels)
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
        files += neighbours.close() + labels.close()
        if h5 is not None:
            files.append(h5.close())
    n["rows"] = neighbours.n_rows
    if n["cells"] == 0:
        raise InputError("query input has no cells")
    return files, n, conf_sum
