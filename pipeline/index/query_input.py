"""Query cells from anywhere: paths of any ingest format, an in-memory :class:`PairedData`, or an open source.

:func:`open_query_input` presents each as an input source (``genes``, ``proteins``, ``n_cells``,
``iter_chunks``, ``close``), the interface :class:`omicsclip.io.readers.InputSource` defines. Protein names are
made canonical (``ingest.harmonise_proteins``) and, given the model's proteins, renamed to the model's names
where both have the same canonical name (:mod:`omicsclip.io.protein_names`), so a panel that calls CD279
``PD-1`` still matches.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from omicsclip.io.paired import PairedData
from omicsclip.io.protein_names import ProteinNameReport, harmonise_protein_names, match_protein_names

log = logging.getLogger(__name__)


def _renamed(data: PairedData, names: Sequence[str] | None) -> PairedData:
    if names is None or data.prot is None or list(names) == data.protein_names:
        return data
    return dataclasses.replace(data, proteins=data.proteins.set_axis(pd.Index(list(names), dtype=object), axis=0))


class _PairedSource:
    """In-memory :class:`PairedData` presented like an ``InputSource``."""

    def __init__(self, data: PairedData) -> None:
        self.data = data
        self.genes = data.gene_names if data.rna is not None else None
        self.proteins = data.protein_names if data.prot is not None else None
        self.n_cells = data.n_cells
        self.info: dict[str, Any] = {}

    def rename_proteins(self, names: Sequence[str]) -> None:
        self.data = _renamed(self.data, names)
        self.proteins = self.data.protein_names

    def iter_chunks(self, chunk_cells: int) -> Iterator[PairedData]:
        for start in range(0, self.n_cells, chunk_cells):
            yield self.data.subset(slice(start, start + chunk_cells))

    def close(self) -> None:
        pass


class _Borrowed:
    """A caller's open input source: used, but left open for the caller to close (and its names untouched)."""

    def __init__(self, src: Any) -> None:
        self._src = src
        self.genes, self.proteins, self.n_cells = src.genes, src.proteins, src.n_cells
        self.info: dict[str, Any] = {}
        self._names: list[str] | None = None

    def rename_proteins(self, names: Sequence[str]) -> None:
        self.proteins = self._names = list(names)

    def iter_chunks(self, chunk_cells: int) -> Iterator[PairedData]:
        for chunk in self._src.iter_chunks(chunk_cells):
            yield _renamed(chunk, self._names)

    def close(self) -> None:
        pass


def _apply(src: Any, new: list[str], report: ProteinNameReport, key: str, what: str) -> None:
    src.rename_proteins(new)
    src.info[key] = report.to_uns()
    log.info("%s", report.describe(what))


def open_query_input(inputs: Any, *, fmt: str = "auto", modality: str | None = None,
                     ingest: Mapping[str, Any] | None = None, model_proteins: Sequence[str] | None = None) -> Any:
    """Open an input source over query cells.

    Parameters
    ----------
    inputs
        Paths (any ingest format, one modality or both), a :class:`~omicsclip.io.paired.PairedData`, or an
        already open source (anything with ``genes``, ``proteins``, ``n_cells`` and ``iter_chunks``; it is
        used but left open for the caller to close, and its own names are not changed).
    fmt, modality
        How to read paths (see :func:`omicsclip.io.readers.open_input`).
    ingest
        The ``ingest:`` config section; :func:`omicsclip.io.readers.reader_options` picks the reader options
        (``harmonise_proteins`` and ``protein_aliases`` among them).
    model_proteins
        The model's protein names: with ``ingest.harmonise_proteins``, query proteins are renamed to them where both
        have the same canonical name (a model trained on a store written before harmonisation keeps its panel's
        names).

    Returns
    -------
    object
        A source with ``genes``, ``proteins``, ``n_cells``, ``iter_chunks(chunk_cells)``, ``close()`` and
        ``info`` (``protein_names``: what harmonisation mapped; ``protein_matching``: what was matched to the
        model, and which query proteins the model lacks).
    """
    from omicsclip.io.readers import open_input, reader_options

    opts = reader_options(ingest)
    aliases = opts.get("protein_aliases")
    if isinstance(inputs, PairedData):
        src: Any = _PairedSource(inputs)
    elif hasattr(inputs, "iter_chunks"):
        src = _Borrowed(inputs)
    else:
        paths = [inputs] if isinstance(inputs, str | Path) else list(inputs)
        src = open_input(paths, fmt, require="any", modality=modality, **opts)
        if model_proteins is not None and opts.get("harmonise_proteins"):
            try:
                src.match_proteins(model_proteins, aliases)
            except BaseException:
                src.close()
                raise
        return src
    if src.proteins is None:
        return src
    if opts.get("harmonise_proteins") and isinstance(inputs, PairedData):
        new, report = harmonise_protein_names(src.proteins, aliases)
        _apply(src, new, report, "protein_names", "query protein names")
    if model_proteins is not None and opts.get("harmonise_proteins"):
        new, report = match_protein_names(src.proteins, model_proteins, aliases)
        _apply(src, new, report, "protein_matching", "query protein names vs the model's")
    return src
