"""Open any supported input (one modality or both) as an :class:`InputSource` that yields validated cell chunks.

This is the one entry point for ingest, query and predict::

    with open_input([Path("cells.h5ad")]) as src:
        print(src.n_cells, len(src.genes), src.proteins)
        for chunk in src.iter_chunks(10_000):   # PairedData, bounded memory
            ...

Cells are paired by barcode across the tables of an input (one 10x matrix, an ``.h5ad`` and its ``obsm``, two
files); isotype controls and hashtags (HTO) are recognised by name and kept out of the protein features, and
with ``harmonise_proteins`` the remaining proteins get canonical names (:mod:`omicsclip.io.protein_names`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.conventions import MODALITIES
from omicsclip.errors import InputError
from omicsclip.io.features import (
    DEFAULT_HTO_PATTERNS,
    DEFAULT_ISOTYPE_PATTERNS,
    check_unique_barcodes,
    check_unique_features,
    examples,
    match_names,
)
from omicsclip.io.formats import detect_format
from omicsclip.io.gene_names import strip_genome_prefix
from omicsclip.io.paired import PairedData
from omicsclip.io.protein_names import (
    ORIGINAL_COLUMN,
    Aliases,
    ProteinNameReport,
    harmonise_protein_names,
    match_protein_names,
)
from omicsclip.io.raw import RawInput
from omicsclip.io.tables import CountTable, View
from omicsclip.io.validate import check_counts

log = logging.getLogger(__name__)

PAIRING = ("strict", "intersect")
REQUIRE = ("both", "any")


def _label(which: str) -> str:
    return {"rna": "RNA", "prot": "protein", "hto": "hashtag"}[which]


class InputSource:
    """Paired, validated access to the cells of one input.

    Attributes
    ----------
    fmt
        The resolved input format.
    files
        The input paths.
    barcodes
        Barcodes of the cells that will be yielded, in order.
    gene_frame, protein_frame
        Feature metadata (index = names) of the kept features, or ``None`` for an absent modality.
    info
        What happened while opening: table sizes, unpaired barcodes, isotypes and hashtags found, notes;
        ``protein_names`` when protein names were harmonised and ``protein_matching`` when they were matched
        to a model (:meth:`~omicsclip.io.protein_names.ProteinNameReport.to_uns`).
    """

    def __init__(self, raw: RawInput, *, isotype_patterns: Sequence[str] = DEFAULT_ISOTYPE_PATTERNS,
                 keep_isotypes: bool = False, hto_patterns: Sequence[str] = DEFAULT_HTO_PATTERNS,
                 pairing: str = "strict", allow_normalized: bool = False, make_unique: bool = False,
                 harmonise_proteins: bool = False, protein_aliases: Aliases = None) -> None:
        if pairing not in PAIRING:
            raise InputError(f"--pairing {pairing!r}: expected one of {', '.join(PAIRING)}")
        self._raw = raw
        self.fmt = raw.fmt
        self.files = list(raw.files)
        self.allow_normalized = allow_normalized
        self.info: dict = {"notes": list(raw.notes), "isotypes": [], "htos": []}
        self._rna, self._prot, self._iso, self._hto = raw.rna, None, None, raw.hto
        if raw.prot is not None:
            self._split_protein(raw.prot, isotype_patterns, keep_isotypes, hto_patterns)
        for which in MODALITIES:
            view = getattr(self, f"_{which}")
            if view is None:
                continue
            if view.n_features == 0:
                raise InputError(f"{view.table.path}: {_label(which)} matrix has no features (empty matrix)")
            if which == "rna":
                self._strip_genome_prefix(view)
            names = check_unique_features(view.features.index, path=view.table.path,
                                          what="gene" if which == "rna" else "protein", unique=make_unique)
            suffixed = int((names != view.features.index.astype(str)).sum())
            if suffixed:  # repeated names suffixed (make_unique)
                self.info[f"{which}_names_suffixed"] = suffixed
            view.features = view.features.set_axis(names, axis=0)
        if harmonise_proteins and self._prot is not None:
            new, report = harmonise_protein_names(self.proteins, protein_aliases)
            self.rename_proteins(new, report, what=f"{self._prot.table.path}: protein names")
        self._pair(pairing)

    # ---- construction -------------------------------------------------------------------------------------
    def _strip_genome_prefix(self, rna: View) -> None:
        """Drop a genome prefix every gene carries (``hg19_CD3E`` -> ``CD3E``; :mod:`omicsclip.io.gene_names`)."""
        names, prefix = strip_genome_prefix(rna.features.index)
        if prefix is None:
            return
        frame = rna.features.copy()
        if ORIGINAL_COLUMN not in frame.columns:
            frame[ORIGINAL_COLUMN] = frame.index.astype(str)
        rna.features = frame.set_axis(pd.Index(names, dtype=object), axis=0)
        self.info["gene_prefix"] = prefix
        self.info["notes"].append(f"genome prefix {prefix!r} removed from all {len(names)} gene names")
        log.info("%s: genome prefix %r removed from all %d gene names (e.g. %s -> %s)", rna.table.path, prefix,
                 len(names), frame.index[0], names[0])

    def _split_protein(self, prot: View, isotype_patterns: Sequence[str], keep_isotypes: bool,
                       hto_patterns: Sequence[str]) -> None:
        names = [str(n) for n in prot.features.index]
        iso = match_names(names, isotype_patterns, key="isotype_patterns")
        hto = match_names(names, hto_patterns, key="hto_patterns") & ~iso
        self.info["isotypes"] = [n for n, m in zip(names, iso, strict=True) if m]
        if hto.any():
            self.info["htos"] = [n for n, m in zip(names, hto, strict=True) if m]
            if self._hto is None:
                self._hto = prot.subset(hto)
            log.info("%s: %d hashtag features kept as obs columns, not proteins: %s", prot.table.path,
                     int(hto.sum()), examples(self.info["htos"]))
        drop = hto | (iso & (not keep_isotypes))
        if iso.any():
            log.info("%s: %d isotype controls %s: %s", prot.table.path, int(iso.sum()),
                     "kept" if keep_isotypes else "removed from the protein features (sum kept in obs)",
                     examples(self.info["isotypes"]))
            if not keep_isotypes:
                self._iso = prot.subset(iso)
        if drop.all():
            raise InputError(f"{prot.table.path}: all {len(names)} protein features are isotype controls or "
                             "hashtags (check ingest.isotype_patterns / ingest.hto_patterns)")
        self._prot = prot.subset(~drop) if drop.any() else prot
        if self._hto is not None:
            self.info["htos"] = [str(n) for n in self._hto.features.index]

    def _tables(self) -> list[CountTable]:
        out: list[CountTable] = []
        for v in (self._rna, self._prot, self._iso, self._hto):
            if v is not None and all(v.table is not t for t in out):
                out.append(v.table)
        return out

    def _pair(self, pairing: str) -> None:
        tables = self._tables()
        for t in tables:
            if t.n_rows == 0:
                raise InputError(f"{t.path}: {t.what} has no cells (empty matrix)")
            check_unique_barcodes(t.barcodes, path=t.path)
        primary = (self._rna or self._prot).table
        self.info["n_cells_per_table"] = {f"{t.path.name}:{t.what}": t.n_rows for t in tables}
        common = primary.barcodes
        if any(not t.barcodes.equals(primary.barcodes) for t in tables[1:]):
            for t in tables:
                if t is not primary:
                    common = common[common.isin(t.barcodes)]
            problems = []
            for t in tables:
                only = t.barcodes[~t.barcodes.isin(common)]
                if len(only):
                    problems.append(f"{len(only)} only in {t.path.name}:{t.what} (e.g. {examples(only)})")
            self.info["n_unpaired"] = {f"{t.path.name}:{t.what}": int((~t.barcodes.isin(common)).sum())
                                       for t in tables}
            if problems:
                if len(common) == 0:
                    raise InputError(f"{primary.path}: no barcodes are shared between the modalities "
                                     f"({'; '.join(problems)})")
                if pairing == "strict":
                    raise InputError(f"{primary.path}: barcodes differ between modalities: {'; '.join(problems)}; "
                                     f"pass --pairing intersect to keep the {len(common)} shared cells")
                log.warning("pairing intersect: keeping %d shared cells; dropped %s", len(common),
                            "; ".join(problems))
        self.barcodes = pd.Index(common)
        self._pos = {id(t): (None if t.barcodes.equals(self.barcodes) else t.barcodes.get_indexer(self.barcodes))
                     for t in tables}
        raw = self._raw
        self._obs = None
        if raw.obs is not None and raw.obs.shape[1] > 0 and raw.obs_table is not None:
            if id(raw.obs_table) in self._pos:
                self._obs_pos = self._pos[id(raw.obs_table)]
                self._obs = raw.obs
            else:
                self._obs = raw.obs.reindex(self.barcodes)
                self._obs_pos = None

    # ---- public API ---------------------------------------------------------------------------------------
    @property
    def gene_frame(self) -> pd.DataFrame | None:
        """Gene metadata (index = names) of the kept genes, or ``None`` without RNA."""
        return None if self._rna is None else self._rna.features

    @property
    def protein_frame(self) -> pd.DataFrame | None:
        """Protein metadata (index = names) of the kept proteins, or ``None`` without protein."""
        return None if self._prot is None else self._prot.features

    @property
    def genes(self) -> list[str] | None:
        """Gene names in column order, or ``None`` without RNA."""
        return None if self._rna is None else [str(g) for g in self._rna.features.index]

    @property
    def proteins(self) -> list[str] | None:
        """Protein names in column order (isotypes/hashtags removed), or ``None`` without protein."""
        return None if self._prot is None else [str(p) for p in self._prot.features.index]

    def rename_proteins(self, names: Sequence[str], report: ProteinNameReport | None = None, *,
                        what: str = "protein names") -> None:
        """Rename the proteins (same order); the names as the input gave them stay in ``original_name``.

        Parameters
        ----------
        names
            The new names, unique, one per protein.
        report
            A :class:`~omicsclip.io.protein_names.ProteinNameReport`: kept in ``info["protein_names"]`` and
            logged (one INFO line).
        what
            How the log line names the change.
        """
        if self._prot is None:
            raise InputError("this input has no protein features to rename")
        frame = self._prot.features.copy()
        if ORIGINAL_COLUMN not in frame.columns:  # a store's own originals win over its canonical names
            frame[ORIGINAL_COLUMN] = frame.index.astype(str)
        self._prot.features = frame.set_axis(pd.Index([str(n) for n in names], dtype=object), axis=0)
        if report is not None:
            self.info["protein_names"] = report.to_uns()
            log.info("%s", report.describe(what))

    def match_proteins(self, reference: Sequence[str], aliases: Aliases = None) -> ProteinNameReport | None:
        """Rename the proteins to a model's names where both have the same canonical name.

        Models trained on stores written before harmonisation carry the names their panel used; this matches
        by canonical name on both sides (:func:`~omicsclip.io.protein_names.match_protein_names`). The report
        goes to ``info["protein_matching"]`` and the log.

        Parameters
        ----------
        reference
            The model's protein names.
        aliases
            A user mapping file (or dict) overriding the shipped alias table.

        Returns
        -------
        ProteinNameReport or None
            ``None`` without protein.
        """
        if self._prot is None:
            return None
        new, report = match_protein_names(self.proteins, reference, aliases)
        self.rename_proteins(new)
        self.info["protein_matching"] = report.to_uns()
        log.info("%s", report.describe(f"{self._prot.table.path}: protein names vs the model's"))
        return report

    @property
    def n_cells(self) -> int:
        """Number of (paired) cells that will be yielded."""
        return len(self.barcodes)

    def table_sizes(self) -> dict[str, int]:
        """Cells in each modality's input before pairing, and how many of them were left unpaired."""
        out = {}
        for which in MODALITIES:
            view = getattr(self, f"_{which}")
            if view is not None:
                out[f"n_cells_input_{which}"] = view.table.n_rows
                out[f"n_cells_unpaired_{which}"] = view.table.n_rows - self.n_cells
        return out

    def _rows(self, table: CountTable, sl: slice) -> np.ndarray:
        pos = self._pos[id(table)]
        return np.arange(sl.start, sl.stop) if pos is None else pos[sl]

    def _chunk(self, sl: slice) -> PairedData:
        bc = self.barcodes[sl]
        blocks = {id(t): t.read_rows(self._rows(t, sl)) for t in self._tables()}
        mats: dict[str, sp.csr_matrix | None] = {}
        for which, view in (("rna", self._rna), ("prot", self._prot)):
            if view is None:
                mats[which] = None
                continue
            m = view.take(blocks[id(view.table)])
            check_counts(m, path=view.table.path, what=_label(which), barcodes=bc, features=view.features.index,
                         allow_normalized=self.allow_normalized, integer=view.table.integer)
            mats[which] = sp.csr_matrix(m, dtype=np.float32)
        obs = pd.DataFrame(index=bc)
        if self._obs is not None:
            src = self._obs.iloc[sl] if self._obs_pos is None else self._obs.iloc[self._rows_obs(sl)]
            for c in self._obs.columns:
                obs[c] = src[c].values
        if self._iso is not None:
            obs["isotype_counts"] = np.asarray(self._iso.take(blocks[id(self._iso.table)]).sum(axis=1),
                                               dtype=np.float32).ravel()
        if self._hto is not None:
            h = self._hto.take(blocks[id(self._hto.table)]).toarray()
            for j, name in enumerate(self._hto.features.index):
                obs[f"hto_{name}"] = h[:, j].astype(np.float32)
        prot = None if mats["prot"] is None else np.asarray(mats["prot"].toarray(), dtype=np.float32)
        return PairedData(rna=mats["rna"], prot=prot, obs=obs,
                          genes=self._rna.features if self._rna is not None else pd.DataFrame(),
                          proteins=self._prot.features if self._prot is not None else pd.DataFrame(),
                          uns={})

    def _rows_obs(self, sl: slice) -> np.ndarray:
        return self._rows(self._raw.obs_table, sl)

    def iter_chunks(self, chunk_cells: int = 10_000) -> Iterator[PairedData]:
        """Yield cells in order, ``chunk_cells`` at a time, validated (memory bounded by the chunk size)."""
        if chunk_cells < 1:
            raise InputError(f"chunk_cells must be >= 1, got {chunk_cells}")
        for start in range(0, self.n_cells, chunk_cells):
            yield self._chunk(slice(start, min(start + chunk_cells, self.n_cells)))

    def read(self) -> PairedData:
        """All cells at once (validated)."""
        chunks = list(self.iter_chunks(max(self.n_cells, 1)))
        return chunks[0]

    def close(self) -> None:
        """Close files and remove temporary files; safe to call twice."""
        self._raw.close()

    def __enter__(self) -> InputSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        g = "-" if self._rna is None else str(len(self._rna.features))
        p = "-" if self._prot is None else str(len(self._prot.features))
        return f"InputSource({self.fmt}, {self.n_cells} cells, genes={g}, proteins={p})"


def _open_raw(paths: list[Path], fmt: str, *, rna_modality: str, prot_modality: str, modality: str | None,
              genes_in_rows: bool, protein_key: str | None, layer: str | None) -> RawInput:
    from omicsclip.io import h5ad

    if layer and fmt not in ("h5ad", "h5ad-pair", "h5mu"):
        raise InputError(f"{paths[0]}: ingest.layer={layer!r} applies to .h5ad/.h5mu inputs only, not {fmt}")
    if fmt == "h5ad":
        return h5ad.open_h5ad(paths[0], keep=modality, protein_key=protein_key, layer=layer)
    if fmt == "h5ad-pair":
        return h5ad.open_h5ad_pair(paths[0], paths[1], layer=layer)
    if fmt == "h5mu":
        return h5ad.open_h5mu(paths[0], rna_modality=rna_modality, prot_modality=prot_modality,
                              protein_key=protein_key, layer=layer)
    if fmt == "zarr":
        return h5ad.open_store(paths[0])
    if fmt == "10x-h5":
        from omicsclip.io.tenx import open_10x_h5

        return open_10x_h5(paths[0])
    if fmt == "10x-mtx":
        from omicsclip.io.tenx import open_10x_mtx, open_10x_mtx_pair

        return open_10x_mtx(paths[0]) if len(paths) == 1 else open_10x_mtx_pair(paths[0], paths[1])
    if fmt == "csv":
        from omicsclip.io.text import open_tables

        return open_tables(paths, genes_in_rows=genes_in_rows, modality=modality)
    raise InputError(f"--format {fmt!r}: not a readable format")


def open_input(inputs: Sequence[str | Path], fmt: str = "auto", *, rna_modality: str = "rna",
               prot_modality: str = "prot", isotype_patterns: Sequence[str] = DEFAULT_ISOTYPE_PATTERNS,
               keep_isotypes: bool = False, hto_patterns: Sequence[str] = DEFAULT_HTO_PATTERNS,
               pairing: str = "strict", allow_normalized: bool = False, require: str = "both",
               modality: str | None = None, genes_in_rows: bool = False, make_unique: bool = False,
               protein_key: str | None = None, layer: str | None = None, harmonise_proteins: bool = False,
               protein_aliases: Aliases = None) -> InputSource:
    """Open one or two input paths of any supported format (or a paired store ``.zarr``).

    Parameters
    ----------
    inputs
        One path (10x ``.h5``, 10x matrix folder, ``.h5ad``, ``.h5mu``, CSV/TSV, store ``.zarr``) or two
        (RNA then protein: two ``.h5ad`` or two count tables).
    fmt
        ``auto`` (from extension and content) or one of ``10x-h5, 10x-mtx, h5ad, h5ad-pair, h5mu, csv, zarr``.
    rna_modality, prot_modality
        Modality names inside an ``.h5mu``.
    isotype_patterns, keep_isotypes
        Regular expressions (``re.search``) recognising isotype-control antibodies; they are removed from
        the protein features (their per-cell sum goes to ``obs['isotype_counts']``) unless ``keep_isotypes``.
    hto_patterns
        Names recognised as hashtag oligos; their counts become ``obs['hto_<name>']`` columns.
    pairing
        ``strict``: barcodes present in only one modality are an error; ``intersect``: keep shared cells.
    allow_normalized
        Accept non-integer values (normalised input); otherwise raw integer counts are required.
    require
        ``both``: RNA and protein must be present; ``any``: one modality is enough (query/predict inputs).
    modality
        Keep one modality, ``"rna"`` or ``"prot"``: what a single-matrix input holds (e.g. a protein-only table
        or ``.h5ad``); of a paired input, that part (an ``.h5ad``'s ``obsm`` protein, or the columns of one
        ``X`` split by 10x feature types).
    genes_in_rows
        CSV/TSV tables have features in rows and cells in columns.
    make_unique
        Suffix duplicate feature names (``-1``, ``-2``) instead of refusing them.
    protein_key
        ``obsm`` key holding protein counts in an ``.h5ad`` (default: search ``protein``, ``protein_expression``...).
    layer
        Read counts from ``layers[layer]`` instead of ``X`` (``.h5ad``/``.h5mu``), e.g. ``"counts"``.
    harmonise_proteins, protein_aliases
        Give the proteins canonical names (:func:`omicsclip.io.protein_names.harmonise_protein_names`; the
        input's names go to the protein frame's ``original_name``), with a user mapping file (or dict) that
        overrides the shipped alias table. Off here, so a store is read with its own names; the config's
        ``ingest.harmonise_proteins`` turns it on for ingest and query inputs.

    Returns
    -------
    InputSource
        Close it (or use it as a context manager) to release files.
    """
    if require not in REQUIRE:
        raise InputError(f"require={require!r}: expected one of {', '.join(REQUIRE)}")
    if modality not in (None, *MODALITIES):
        raise InputError(f"modality={modality!r}: expected 'rna' or 'prot'")
    paths = [Path(p) for p in inputs]
    fmt = detect_format(paths, fmt)
    raw = _open_raw(paths, fmt, rna_modality=rna_modality, prot_modality=prot_modality, modality=modality,
                    genes_in_rows=genes_in_rows, protein_key=protein_key, layer=layer or None)
    try:
        if modality is not None:
            other = "prot" if modality == "rna" else "rna"
            if getattr(raw, other) is not None:
                setattr(raw, other, None)
        missing = [m for m in MODALITIES if getattr(raw, m) is None]
        if require == "both" and missing:
            m = missing[0]
            why = raw.missing.get(m, f"no {_label(m)} counts")
            raise InputError(f"{paths[0]}: {why}; both RNA and protein are needed")
        if len(missing) == 2:
            why = raw.missing.get("rna") or "neither RNA nor protein counts found"
            raise InputError(f"{paths[0]}: {why}")
        src = InputSource(raw, isotype_patterns=isotype_patterns, keep_isotypes=keep_isotypes,
                          hto_patterns=hto_patterns, pairing=pairing, allow_normalized=allow_normalized,
                          make_unique=make_unique, harmonise_proteins=harmonise_proteins,
                          protein_aliases=protein_aliases or None)
    except BaseException:
        raw.close()
        raise
    log.debug("opened %s", src)
    return src


READER_KEYS = ("rna_modality", "prot_modality", "isotype_patterns", "keep_isotypes", "hto_patterns", "pairing",
               "allow_normalized", "genes_in_rows", "make_unique", "protein_key", "layer", "harmonise_proteins",
               "protein_aliases")


def reader_options(ingest_section: Mapping[str, Any] | None) -> dict[str, Any]:
    """Select the keys of a config's ``ingest`` section that :func:`open_input` accepts.

    This is the one filter from a config section to reader options; every caller (ingest, query, predict)
    passes its section through it.

    Parameters
    ----------
    ingest_section
        The ``ingest:`` config section (other keys, e.g. ``min_counts_rna``, are left out).

    Returns
    -------
    dict
        Keyword arguments for :func:`open_input`; empty strings (``""`` = not set in YAML) are dropped.
    """
    sec = dict(ingest_section or {})
    return {k: sec[k] for k in READER_KEYS if k in sec and sec[k] != ""}
