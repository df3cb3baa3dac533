"""Match new cells' features to a fitted model by name: genes and proteins reordered into the model's order.

Missing features are reported (:class:`FeatureReport`) and left empty, which the preprocessing turns into the
training mean; an RNA input missing more than ``max_missing_gene_fraction`` of the model's genes, or a protein input
missing more than ``max_missing_protein_fraction`` of its proteins, is refused. Below the protein limit, the
fraction missing is kept per cell (:func:`protein_missing_fraction`): the few-label heads down-weight the protein
embedding of a degraded panel by it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.errors import InputError
from omicsclip.io.gene_names import mismatch_hint, strip_genome_prefix
from omicsclip.io.panels import dataset_label
from omicsclip.model.preprocess import PreprocessState, library_size

log = logging.getLogger(__name__)


@dataclass
class FeatureReport:
    """How a new input's features matched the model's.

    Attributes
    ----------
    modality
        ``rna`` or ``prot``.
    n_model
        Number of model features of that modality.
    missing
        Model features absent from the input.
    panel_fraction
        With several training panels: the fraction of the best-covered one the input lacks (``missing_fraction``).
    left_out
        Model features the input has but that enter as unmeasured: its closest training dataset never measured
        them (a model pooled on several datasets' genes or panels: :func:`_as_closest_dataset`; for proteins,
        :func:`_as_closest_panel`, the union over the input's cells). :meth:`present_mask` is for genes, whose
        left-out set is one for the whole input.
    """

    modality: str
    n_model: int
    missing: list[str] = field(default_factory=list)
    panel_fraction: float | None = None
    left_out: list[str] = field(default_factory=list)

    @property
    def n_missing(self) -> int:
        """Number of model features the input lacks."""
        return len(self.missing)

    @property
    def missing_fraction(self) -> float:
        """Fraction of the model's features the input lacks.

        For a model trained on several antibody panels (``panel_fraction`` set): the fraction of the training
        panel the input covers best, so a dataset's own panel is complete (0), not missing the other panels.
        """
        if self.panel_fraction is not None:
            return self.panel_fraction
        return self.n_missing / max(self.n_model, 1)

    def present_mask(self, features: Sequence[str]) -> np.ndarray | None:
        """Return, over the model's ``features``, True where the input's value enters the model.

        False for missing and left-out features; ``None`` when every feature enters.
        """
        absent = [*self.missing, *self.left_out]
        if not absent:
            return None
        mask = np.ones(len(features), bool)
        mask[pd.Index(features).get_indexer(absent)] = False
        return mask

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-serialisable dict."""
        return {"modality": self.modality, "n_model": self.n_model, "n_missing": self.n_missing,
                "missing_fraction": self.missing_fraction, "missing": list(self.missing),
                "n_left_out": len(self.left_out)}


def _check_names(names: Sequence[str], what: str) -> list[str]:
    names = [str(n) for n in names]
    dup = pd.Index(names)[pd.Index(names).duplicated()]
    if len(dup):
        raise InputError(f"{what} names are not unique (e.g. {', '.join(map(str, dup[:3]))})")
    return names


def _unprefixed(genes: list[str], model_genes: Sequence[str]) -> list[str]:
    """``genes`` renamed to the model's names where they differ only by a genome prefix (``hg19_CD3E``).

    Readers remove a prefix every gene carries (:mod:`omicsclip.io.gene_names`), so a model trained on plain
    names meets prefixed counts given in memory, and a model trained on a store written with prefixes meets
    plain names; either way genes are matched on their names without the prefix. Kept as given unless that
    matches more model genes.
    """
    model_plain, model_prefix = strip_genome_prefix(model_genes)
    plain, prefix = strip_genome_prefix(genes)
    if prefix == model_prefix:  # both plain, or the same prefix on both sides
        return genes
    to_model = dict(zip(model_plain, model_genes, strict=True))
    renamed = [to_model.get(g, g) for g in plain]
    if (len(set(renamed)) < len(renamed)  # "CD3E" beside "hg19_CD3E": leave the names to the duplicate check
            or pd.Index(renamed).isin(model_genes).sum() <= pd.Index(genes).isin(model_genes).sum()):
        return genes
    log.info("RNA input: genes matched to the model's without their genome prefix (input %r, model %r)",
             prefix or "", model_prefix or "")
    return renamed


def align_rna(
    rna: sp.spmatrix | np.ndarray, genes: Sequence[str] | None, state: PreprocessState, *,
    as_closest_dataset: bool = False,
) -> tuple[sp.csr_matrix, np.ndarray, FeatureReport]:
    """Match new cells' genes to the model's by name.

    Parameters
    ----------
    rna
        Cells x genes raw counts (CSR or dense).
    genes
        Column names of ``rna``; ``None`` means the training store's gene order (or the model's genes when the
        width equals the number of model genes).
    state
        The model's preprocessing state.
    as_closest_dataset
        A model pooled on several datasets' genes (``state.gene_panels``): present the cells as those of the
        training dataset whose genes they cover best (:func:`_as_closest_dataset`), as new cells are embedded.
        ``False`` for a pooled store's own rows, whose unmeasured genes are masked per cell by the caller.

    Returns
    -------
    counts, lib, report
        Raw counts in model gene order (CSR, missing genes empty), the library size of every cell over *all*
        its input genes, and the matching report.
    """
    rna = sp.csr_matrix(rna, dtype=np.float32)
    if genes is None:
        if rna.shape[1] == len(state.all_genes):
            genes = state.all_genes
        elif rna.shape[1] == len(state.genes):
            log.warning("RNA input without gene names has the model's %d genes: library sizes use only these",
                        len(state.genes))
            genes = state.genes
        else:
            raise InputError(
                f"RNA input has {rna.shape[1]} columns and no gene names; the model expects "
                f"{len(state.all_genes)} (training genes) or {len(state.genes)} (model genes)"
            )
    genes = _unprefixed(_check_names(genes, "gene"), state.genes)
    if len(genes) != rna.shape[1]:
        raise InputError(f"RNA input has {rna.shape[1]} columns but {len(genes)} gene names")
    pos = pd.Index(genes).get_indexer(state.genes)
    missing = [g for g, p in zip(state.genes, pos, strict=True) if p < 0]
    lacking, panel, closest = refuse_lacking(missing, state, "genes", "RNA input", genes)
    library_genes, left_out = state.library_genes, []
    if as_closest_dataset and state.gene_panels:  # several datasets' genes: as the closest dataset's cells
        pos, left_out, library_genes = _as_closest_dataset(pos, closest, state)
    report = FeatureReport("rna", len(state.genes), missing, lacking if state.gene_panels else None, left_out)
    if missing and lacking == 0:  # a model trained on several datasets' genes: this is one's gene set, complete
        log.info("RNA input has %d of the model's %d genes: a training dataset's gene set, complete",
                 report.n_model - report.n_missing, report.n_model)
    elif missing:
        log.warning("RNA input lacks %d of the model's %d genes (%.1f%%%s); set to the training mean (e.g. %s)",
                    report.n_missing, report.n_model, 100 * lacking, panel, ", ".join(missing[:3]))
        lost = sorted(set(missing) & set(state.protein_genes or []))
        if lost:
            log.warning("%d of the missing genes are protein genes of the model (inputs picked for their "
                        "correlation with a protein): %s", len(lost), ", ".join(lost[:10]))
    present = np.flatnonzero(pos >= 0)
    sel = sp.csr_matrix(
        (np.ones(present.size, np.float32), (pos[present], present)), shape=(rna.shape[1], len(state.genes))
    )
    counts = sp.csr_matrix(rna @ sel)
    counts.sort_indices()
    if library_genes is None:
        return counts, library_size(rna), report
    lib_cols = pd.Index(genes).get_indexer(library_genes)  # preprocess.genes (or a dataset's): count only those
    return counts, library_size(rna[:, np.sort(lib_cols[lib_cols >= 0])]), report


def align_proteins(
    prot: np.ndarray | sp.spmatrix | pd.DataFrame, proteins: Sequence[str] | None, state: PreprocessState, *,
    as_closest_dataset: bool = False,
) -> tuple[np.ndarray, np.ndarray, FeatureReport]:
    """Match new cells' proteins to the model's by name.

    Parameters
    ----------
    prot
        Cells x proteins raw counts (array, sparse or DataFrame with protein columns).
    proteins
        Column names of ``prot``; ``None``: the model's proteins, in model order (the width must match).
    state
        The model's preprocessing state.
    as_closest_dataset
        A model trained on several antibody panels (``state.panels``): present each cell as a cell of the training
        panel its proteins cover best (:func:`_as_closest_panel`), as new cells are embedded; the proteins it
        measured beyond that panel are left out (of the CLR too), as they were for every training cell of it.

    Returns
    -------
    counts, present, report
        Raw counts in model protein order (missing columns zero), a boolean mask of the model proteins present
        in the input (and entering the model), and the matching report. NaN input entries (proteins outside a cell's panel, in a store
        pooled from several panels: :mod:`omicsclip.io.panels`) are returned as 0 and ``present`` is then one
        mask per cell (cells x proteins).

    Raises
    ------
    InputError
        No protein shared with the model, more than ``state.max_missing_protein_fraction`` of the model's
        proteins missing, duplicate names or inconsistent shapes.
    """
    if isinstance(prot, pd.DataFrame):
        proteins = list(prot.columns) if proteins is None else proteins
        prot = prot.to_numpy()
    prot = np.asarray(prot.toarray() if sp.issparse(prot) else prot, dtype=np.float32)
    if proteins is None:
        if prot.shape[1] != len(state.proteins):
            raise InputError(f"protein input has {prot.shape[1]} columns and no names; the model expects "
                             f"{len(state.proteins)}")
        proteins = state.proteins
    proteins = _check_names(proteins, "protein")
    if len(proteins) != prot.shape[1]:
        raise InputError(f"protein input has {prot.shape[1]} columns but {len(proteins)} protein names")
    pos = pd.Index(proteins).get_indexer(state.proteins)
    present = pos >= 0
    if not present.any():
        raise InputError(
            f"protein input shares no protein with the model (model: {', '.join(state.proteins[:5])}...; "
            f"input: {', '.join(proteins[:5])}...)"
        )
    missing = [p for p, ok in zip(state.proteins, present, strict=True) if not ok]
    lacking, panel, _ = refuse_lacking(missing, state, "proteins", "protein input")
    report = FeatureReport("prot", len(state.proteins), missing, lacking if state.panels else None)
    if missing and lacking == 0:  # a model trained on several panels: this is one of them, complete
        log.info("protein input has %d of the model's %d proteins: a training panel, complete",
                 report.n_model - report.n_missing, report.n_model)
    elif missing:
        log.warning("protein input lacks %d of the model's %d proteins (%.0f%%%s); left out of the CLR, their model "
                    "inputs set to the training mean, the heads down-weight the protein embedding (e.g. %s)",
                    report.n_missing, report.n_model, 100 * lacking, panel, ", ".join(missing[:5]))
    out = np.zeros((prot.shape[0], len(state.proteins)), np.float32)
    out[:, present] = prot[:, pos[present]]
    unmeasured = np.isnan(out)
    if unmeasured.any():
        out[unmeasured] = 0.0
        present = present[None, :] & ~unmeasured
    if as_closest_dataset and state.panels:
        present, report.left_out = _as_closest_panel(present, state)
        out[~np.broadcast_to(present, out.shape)] = 0.0
    return out, present, report


def _as_closest_panel(present: np.ndarray, state: PreprocessState) -> tuple[np.ndarray, list[str]]:
    """Leave out the proteins a cell measured beyond the training panel its proteins cover best (a pooled model).

    Each training cell's CLR and inputs saw only its own dataset's panel. A cell that measured more (a lab with a
    larger panel, or the union) is presented as the cells of the closest panel (:func:`_closest_panel_gap`, per
    pattern of measured proteins): the others count as unmeasured. ``present``: proteins, or cells x proteins.
    Returns the new mask and the model proteins left out (of any cell).
    """
    rows = present.reshape(-1, present.shape[-1])
    packed = np.ascontiguousarray(np.packbits(rows, axis=1))  # np.unique(axis=0) on bools is slow: one key per row
    _, first, inverse = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(), return_index=True,
                                  return_inverse=True)
    patterns = rows[first]
    model = pd.Index(state.proteins)
    keep = np.ones_like(patterns)
    for i, pattern in enumerate(patterns):
        lacking = {state.proteins[j] for j in np.flatnonzero(~pattern)}
        best = _closest_panel_gap(lacking, state.panels, len(state.proteins), "proteins")[2]
        keep[i] = model.isin(state.panels[best])
    dropped = patterns & ~keep
    left_out = [state.proteins[j] for j in np.flatnonzero(dropped.any(axis=0))]
    if left_out:
        log.info("protein input presented as the closest training panel's cells: %d proteins it measured beyond "
                 "that panel are left out (e.g. %s)", len(left_out), ", ".join(left_out[:5]))
    return (patterns & keep)[inverse.ravel()].reshape(present.shape), left_out


def _as_closest_dataset(pos: np.ndarray, best: int, state: PreprocessState
                        ) -> tuple[np.ndarray, list[str], list[str] | None]:
    """Leave out the input's genes that its closest training dataset did not measure (a pooled model).

    Each training cell saw only its own dataset's genes (the others at the training mean) and a library size over
    them. An input that measured more, e.g. a lab with every gene querying a reference pooled from labs with
    different gene sets, would otherwise be unlike any training cell: its principal-axis scores and library size
    would add up genes no training cell had together. So the input is presented as the cells of the training
    dataset it covers best (``best``, from :func:`_closest_panel_gap`): the other model genes count as unmeasured
    and the library (``state.library_panels``) counts that dataset's genes. Returns the new ``pos``, the model
    genes the input has that are left out, and the library genes.
    """
    drop = (pos >= 0) & ~pd.Index(state.genes).isin(state.gene_panels[best])
    left_out = [state.genes[i] for i in np.flatnonzero(drop)]
    if left_out:
        log.info("RNA input presented as the cells of training dataset %s (%d genes): %d model genes it has but that "
                 "dataset did not measure are left out", dataset_label(state.datasets, best),
                 len(state.gene_panels[best]), len(left_out))
    library = state.library_genes if state.library_panels is None else state.library_panels[best]
    return np.where(drop, -1, pos), left_out, library


def refuse_lacking(missing: Sequence[str], state: Any, what: str, source: str,
                   have: Sequence[str] = ()) -> tuple[float, str, int]:
    """Refuse an input lacking more than the model allows of its ``what`` (``genes`` or ``proteins``).

    The fraction is of the training dataset's genes (panel) the input covers best (:func:`_closest_panel_gap`),
    so one dataset's own gene set or panel queries a model pooled from several. ``missing``: the model features
    the input lacks; ``state``: the model's :class:`PreprocessState`. Used by :func:`align_rna`,
    :func:`align_proteins` and, before any cell is read, the query's feature check. Returns the fraction, a
    description of the panel it is of and the panel's index (-1 with one training dataset). ``have``: the input's
    own gene names, for a hint when they are another species' or another kind of name
    (:func:`omicsclip.io.gene_names.mismatch_hint`).

    Raises
    ------
    InputError
        The fraction is above ``max_missing_gene_fraction`` / ``max_missing_protein_fraction``; for genes the
        message says how to train a model on the genes both share.
    """
    genes = what == "genes"
    panels, n_model = (state.gene_panels, len(state.genes)) if genes else (state.panels, len(state.proteins))
    limit = state.max_missing_gene_fraction if genes else state.max_missing_protein_fraction
    lacking, panel, closest = _closest_panel_gap(set(missing), panels, n_model, what, state.datasets)
    if lacking > limit:
        panel_name = dataset_label(state.datasets, closest)
        gap, of = list(missing), f"the model's {n_model} {what}"
        if closest >= 0:  # count and name only what the closest dataset measured
            measured = set(panels[closest])
            gap = [m for m in missing if m in measured]
            of = f"the {len(panels[closest])} {what} of the training dataset it covers best, {panel_name}"
        hint = (mismatch_hint(state.genes, have) or "; train a model that fits it on the genes both share: "
                "omicsclip train STORE --genes-from THIS_INPUT (or set preprocess.genes)") if genes else ""
        raise InputError(
            f"{source} lacks {len(gap)} of {of} ({lacking:.0%} > max_missing_{'gene' if genes else 'protein'}"
            f"_fraction={limit:g}); e.g. {', '.join(gap[:3])}{hint}"
        )
    return lacking, panel, closest


def _closest_panel_gap(missing: set[str], panels: list[list[str]] | None, n_model: int,
                       what: str, datasets: list[str] | None = None) -> tuple[float, str, int]:
    """Return the fraction of the best-covered training panel the input lacks, a description of it and its index.

    The best-covered panel lacks the smallest fraction; of equals, it is the one with the most features. Without
    ``panels`` (one training dataset), the fraction of all ``n_model`` model features (index -1).
    """
    if not panels:
        return len(missing) / max(n_model, 1), "", -1
    counts = [sum(p in missing for p in panel) for panel in panels]
    gaps = [c / max(len(panel), 1) for c, panel in zip(counts, panels, strict=True)]
    best = min(range(len(gaps)), key=lambda i: (gaps[i], -len(panels[i])))
    return gaps[best], (f" = {counts[best]} of the {len(panels[best])} {what} of the closest training dataset, "
                        f"{dataset_label(datasets, best)}"), best


def protein_missing_fraction(report: dict[str, Any] | FeatureReport | None, n_cells: int) -> np.ndarray:
    """Per cell, the fraction of the model's proteins its protein input lacked (float32, ``n_cells``).

    Every cell of one input shares its panel, so this is the report's ``missing_fraction`` for each cell; kept per
    cell so that embeddings of inputs with different panels can be put together. The heads' protein reliability is
    ``1 - fraction`` (:func:`omicsclip.heads.inputs.reliability_mask`).

    Parameters
    ----------
    report
        The protein :class:`FeatureReport` of the input (or its :meth:`~FeatureReport.to_dict`, as in
        ``TrainedModel.last_report["prot"]``); ``None``: no protein input, every protein missing (1.0).
    n_cells
        Number of cells of the input.
    """
    if report is None:
        return np.ones(n_cells, np.float32)
    frac = report.missing_fraction if isinstance(report, FeatureReport) else float(report["missing_fraction"])
    return np.full(n_cells, frac, np.float32)
