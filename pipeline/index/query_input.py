"""Query cells from anywhere: paths of any ingest format, an in-memory :class:`PairedData`, or an open source.

:func:`open_query_input` presents each as an input source (``genes``, ``proteins``, ``n_cells``,
``iter_chunks``, ``close``), the interface :class:`omicsclip.io.readers.InputSource` defines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omicsclip.io.paired import PairedData


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
    """Open an input source over query cells.

    Parameters
    ----------
    inputs
        Paths (any ingest format, one modality or both), a :class:`~omicsclip.io.paired.PairedData`, or an
        already open source (anything with ``genes``, ``proteins``, ``n_cells`` and ``iter_chunks``; it is
        used but left open for the caller to close).
    fmt, modality
        How to read paths (see :func:`omicsclip.io.readers.open_input`).
    ingest
        The ``ingest:`` config section; :func:`omicsclip.io.readers.reader_options` picks the reader options.

    Returns
    -------
    object
        A source with ``genes``, ``proteins``, ``n_cells``, ``iter_chunks(chunk_cells)`` and ``close()``.
    """
    if isinstance(inputs, PairedData):
        return _PairedSource(inputs)
    if hasattr(inputs, "iter_chunks"):
        return _Borrowed(inputs)
    from omicsclip.io.readers import open_input, reader_options

    paths = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    return open_input(paths, fmt, require="any", modality=modality, **reader_options(ingest))
