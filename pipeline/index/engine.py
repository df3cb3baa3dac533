"""The per-chunk query engine: embed query cells, search the reference, impute protein and vote labels.

:class:`QueryEngine` turns one chunk of cells into a :class:`ChunkResult`; :mod:`omicsclip.index.query` drives it
over a whole input (in memory or streamed to files).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.conventions import MODALITIES, label_values
from omicsclip.errors import InputError
from omicsclip.index.impute import confidence, fill_unmeasured, impute, neighbour_weights, vote, voting_weight
from omicsclip.index.mapping_score import neighbour_statistic
from omicsclip.index.reference import ReferenceIndex
from omicsclip.io.paired import PairedData

log = logging.getLogger(__name__)

FILL_SEARCH_FACTOR = 8  # a protein no neighbour measured: search this many times deeper for cells that did, ...
FILL_MAX_DEPTH = 10_240  # ... up to this many neighbours
FILL_BUDGET = 1 << 24  # floats in one deeper search's cells x neighbours x proteins temporary (64 MB)
MEASURED_BLOCK = 65_536  # reference rows read at a time to find the proteins some cell measured

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
    ood_alpha
        A cell is flagged ``out_of_reference`` when its ``mapping_score`` is at most this
        (:mod:`omicsclip.index.mapping_score`).
    ignore_labels
        Reference label values never transferred as a class (``evaluate.ignore_labels``): such reference cells
        do not vote (they still count as neighbours for imputation, and a cell among them gets no label).
        Reference cells without any label (missing: NaN, ``""``; e.g. an unlabelled dataset of a pooled reference)
        are looked past instead: labels come from the ``impute_k`` nearest cells that carry one.
    """

    k: int = 10
    impute_k: int = 20
    temperature: float = 0.05
    transfer_from: str = "same"
    chunk_cells: int = 20_000
    ood_alpha: float = 0.01
    ignore_labels: tuple[str, ...] = ()

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, **overrides: Any) -> QuerySettings:
        """From a ``query:`` config section; keyword overrides that are not ``None`` win.

        ``ignore_labels`` (not a ``query:`` key) defaults to the shipped config's ``evaluate.ignore_labels``.
        """
        d = {k: v for k, v in dict(section or {}).items() if k in cls.__dataclass_fields__}
        d.update({k: v for k, v in overrides.items() if v is not None})
        if d.get("ignore_labels") is None:
            from omicsclip.config import default_config

            d["ignore_labels"] = default_config()["evaluate"]["ignore_labels"]
        d["ignore_labels"] = tuple(str(v).strip() for v in d["ignore_labels"])
        s = cls(**d)
        if not 0 < s.ood_alpha < 1:
            raise InputError(f"query.ood_alpha={s.ood_alpha!r}: expected a number between 0 and 1")
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
    cells: pd.DataFrame | None = None


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
        self._annotated: dict[str, np.ndarray] = {}  # per key, when some cells have no label at all: which do
        self._measured: np.ndarray | None = None  # per reference protein: measured by some cell (lazy)
        if ref.labels is not None:
            ignored = {v.lower() for v in settings.ignore_labels}  # as label_values compares them
            for key in ref.labels.columns:
                cell_code, uniques = pd.factorize(ref.labels[key], use_na_sentinel=False)  # one pass per value
                given = label_values(uniques)  # None: no label at all
                classes = sorted({v for v in given if v is not None and v.lower() not in ignored})
                if classes:
                    code = np.array([classes.index(v) if v in classes else -1 for v in given], dtype=np.int64)
                    self._codes[key] = code[cell_code]  # -1: does not vote (no label, or an ignored one)
                    self.label_classes[key] = classes
                    annotated = np.array([v is not None for v in given])[cell_code]
                    if not annotated.all():  # e.g. an unlabelled dataset in a pooled reference
                        self._annotated[key] = annotated
        if ref.mapping is None:
            log.warning("%s: the index has no mapping-score calibration (built before omicsclip wrote one): "
                        "no mapping_score / out_of_reference; rebuild it with omicsclip index to get them", ref.path)

    def transfer_modality(self, query_mod: str) -> str:
        """Return the reference index whose neighbours impute protein and transfer labels for ``query_mod`` queries."""
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
        transfer = cells = None
        for qm in MODALITIES:
            if qm not in emb:
                continue
            if emb[qm].shape[1] != self.ref.dim:
                raise InputError(f"{self.ref.path}: index dimension {self.ref.dim} differs from the model's "
                                 f"{qm} embedding dimension {emb[qm].shape[1]}")
            for im in self.ref.modalities:
                is_transfer = qm == primary and im == self.transfer_modality(primary)
                is_mapping = qm == primary and im == primary and self._calibrated(primary)
                k = max(s.k, s.impute_k if is_transfer else 1, self.ref.mapping.k if is_mapping else 1)
                sims, pos = self.ref.search(im, emb[qm], k)
                if is_transfer:
                    transfer = (sims[:, :s.impute_k], pos[:, :s.impute_k])
                if is_mapping:
                    mk = self.ref.mapping.k
                    stat = neighbour_statistic(sims[:, :mk], pos[:, :mk] >= 0)
                    score = self.ref.mapping.score(primary, stat)
                    cells = pd.DataFrame({"query_id": ids, "query_modality": primary,
                                          "mapping_similarity": stat.astype(np.float32), "mapping_score": score,
                                          "out_of_reference": score <= s.ood_alpha})
                frames.append(self._neighbour_frame(ids, qm, im, sims[:, :s.k], pos[:, :s.k]))
        table = pd.concat(frames, ignore_index=True)
        # query-major row order (cell, then direction, then rank): the same table whatever the chunking
        order = np.argsort(table.pop("_cell").to_numpy(), kind="stable")
        out = ChunkResult(ids=ids, neighbours=table.iloc[order].reset_index(drop=True), cells=cells)
        if transfer is None:
            return out
        sims, pos = transfer
        valid = pos >= 0
        weights = neighbour_weights(sims, s.temperature, valid)
        if "rna" in emb and "prot" not in emb and self.ref.protein is not None:
            out.imputed, counts = impute(self.ref.protein, np.where(valid, pos, 0), weights, return_counts=True)
            if self.ref.n > s.impute_k:  # each protein from the impute_k nearest cells that measured it: in a
                # pooled reference, where some neighbours did not, search deeper (_fill_unmeasured)
                short = (counts < (weights.astype(np.float32) > 0).sum(axis=1, keepdims=True))
                if short.any():  # never for a reference with every protein in every cell
                    out.imputed[short & self._measured_proteins()] = np.nan
            if np.isnan(out.imputed).any():
                self._fill_unmeasured(out.imputed, emb["rna"], self.transfer_modality(primary))
            out.confidence = confidence(np.where(valid, sims, 0.0), weights)
            out.top_similarity = np.where(valid[:, 0], sims[:, 0], np.nan).astype(np.float32)
        if self._codes:
            lab = pd.DataFrame({"query_id": ids, "query_modality": primary})
            for key, classes in self.label_classes.items():
                at = np.where(valid, pos, 0)
                frac = vote(self._codes[key], len(classes), at, weights)
                # cells without any label are looked past: they count in neither the vote nor its weight
                share = voting_weight(self._codes[key], at, weights if key not in self._annotated
                                      else weights * self._annotated[key][at])
                if key in self._annotated:  # neighbours without any label: vote among the nearest that have one
                    self._vote_past_unannotated(key, frac, share, valid, pos, emb[primary],
                                                self.transfer_modality(primary))
                best = frac.argmax(axis=1)
                top = frac[np.arange(len(best)), best]
                lab[key] = np.where(top > 0, np.asarray(classes, dtype=object)[best], "")
                lab[f"{key}_vote_fraction"] = top
                lab[f"{key}_voting_weight"] = share
                for j, c in enumerate(classes):
                    lab[f"{key}_fraction_{c}"] = frac[:, j]
            out.labels = lab
        return out

    def _fill_unmeasured(self, imputed: np.ndarray, q: np.ndarray, modality: str) -> None:
        """Impute each NaN entry (a protein some of a cell's neighbours lacked) from the nearest cells that had it.

        The cells concerned are searched again, FILL_SEARCH_FACTOR times deeper each round, until ``impute_k`` cells
        that measured the protein are found (:func:`fill_unmeasured`); at FILL_MAX_DEPTH neighbours (or the whole
        reference) as many as were found serve, and with none the value stays NaN, with a warning.
        """
        s = self.settings
        measured = self._measured_proteins()  # a protein no reference cell measured is not searched for

        def holes(r: np.ndarray) -> np.ndarray:
            return r[(np.isnan(imputed[r]) & measured).any(axis=1)]

        def fill(r: np.ndarray, sims: np.ndarray, pos: np.ndarray, deeper: bool) -> np.ndarray:
            part = imputed[r]
            fill_unmeasured(part, self.ref.protein, pos, sims, k=s.impute_k, temperature=s.temperature,
                            need_k=deeper)  # the k nearest that measured it, if not found: deeper
            imputed[r] = part
            return holes(r)

        # n x depth x proteins temporaries stay bounded
        rows, depth = self._search_deeper(holes(np.arange(len(imputed))), q, modality, imputed.shape[1], fill)
        if rows.size:
            log.warning("%d query cells keep a NaN imputed protein: none of their %d nearest reference cells "
                        "measured it", rows.size, depth)

    def _vote_past_unannotated(self, key: str, frac: np.ndarray, share: np.ndarray, valid: np.ndarray,
                               pos: np.ndarray, q: np.ndarray, modality: str) -> None:
        """Re-vote, in place, the rows whose ``impute_k`` nearest cells include cells without a label.

        ``frac`` (vote fractions) and ``share`` (:func:`voting_weight`) are updated. Those cells (NaN or empty labels, e.g. a pooled reference's unlabelled dataset) say nothing about the
        cell type, so they are looked past, as cells that did not measure a protein are for imputation: the vote
        is over the ``impute_k`` nearest cells that carry a label (an ``ignore_labels`` value such as ``unknown``
        counts as carried: it does not vote, but it is not looked past). Searched ``FILL_SEARCH_FACTOR`` times
        deeper each round, up to ``FILL_MAX_DEPTH`` neighbours.
        """
        s, annotated, codes = self.settings, self._annotated[key], self._codes[key]
        need = min(s.impute_k, int(annotated.sum()))
        rows = np.flatnonzero((valid & annotated[np.where(valid, pos, 0)]).sum(axis=1) < need)

        def revote(r: np.ndarray, sims: np.ndarray, deep: np.ndarray, deeper: bool) -> np.ndarray:
            ok = deep >= 0
            ok &= annotated[np.where(ok, deep, 0)]
            take = ok & (np.cumsum(ok, axis=1) <= need)
            w = neighbour_weights(sims, s.temperature, take)
            frac[r] = vote(codes, frac.shape[1], np.where(take, deep, 0), w)
            share[r] = voting_weight(codes, np.where(take, deep, 0), w)
            return r[take.sum(axis=1) < need]

        self._search_deeper(rows, q, modality, 1, revote)  # the vote's temporaries are rows x depth

    def _search_deeper(self, rows: np.ndarray, q: np.ndarray, modality: str, width: int,
                       visit: Callable[[np.ndarray, np.ndarray, np.ndarray, bool], np.ndarray],
                       ) -> tuple[np.ndarray, int]:
        """Search query cells ``rows`` of ``q`` again, ``FILL_SEARCH_FACTOR`` times deeper each round.

        ``visit(rows, sims, pos, deeper)`` handles one block of rows (``deeper``: another round may follow) and
        returns those still short; blocks keep ``rows x depth x width`` within ``FILL_BUDGET``. Stops when no row
        is short or at ``FILL_MAX_DEPTH`` neighbours (or the whole reference); returns the rows still short and
        the depth reached.
        """
        depth, cap = self.settings.impute_k, min(self.ref.n, FILL_MAX_DEPTH)
        while rows.size and depth < cap:
            depth = min(cap, depth * FILL_SEARCH_FACTOR)
            block = max(1, FILL_BUDGET // (depth * width))
            short = []
            for start in range(0, rows.size, block):
                r = rows[start:start + block]
                sims, pos = self.ref.search(modality, q[r], depth)
                short.append(visit(r, sims, pos, depth < cap))
            rows = np.concatenate(short)
        return rows, depth

    def _measured_proteins(self) -> np.ndarray:
        """Per reference protein, whether any reference cell measured it (read once, in row blocks)."""
        if self._measured is None:
            protein = self.ref.protein
            measured = np.zeros(protein.shape[1], bool)
            for start in range(0, protein.shape[0], MEASURED_BLOCK):  # a memory map: a block at a time
                measured |= ~np.isnan(np.asarray(protein[start:start + MEASURED_BLOCK])).all(axis=0)
                if measured.all():
                    break
            self._measured = measured
        return self._measured

    def _calibrated(self, modality: str) -> bool:
        """Return whether the mapping score of ``modality`` queries can be computed (calibration and index)."""
        return self.ref.mapping is not None and modality in self.ref.mapping.null and modality in self.ref.indices

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
