"""Reference lookup from a notebook: :func:`build_index`, :func:`load_index` and :class:`Reference`.

An index is built in memory by :meth:`omicsclip.index.reference.ReferenceIndex.build` and written, when wanted
(``out=`` or :meth:`Reference.save`), by :meth:`~omicsclip.index.reference.ReferenceIndex.save`: the folder
``omicsclip index`` writes. It is queried with :func:`omicsclip.index.query.query` (what ``omicsclip query``
runs, in memory). Nothing is written unless asked for: no temporary files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.api._inputs import ConfigLike, opened, resolve_config
from omicsclip.api.model import OmicsClipModel, embed_cells, load_model
from omicsclip.errors import InputError

log = logging.getLogger(__name__)


class Reference:
    """A reference index (one FAISS index per modality, reference protein and labels) and its model.

    Get one from :func:`build_index` or :func:`load_index`; look new cells up with :meth:`query`.

    Attributes
    ----------
    index
        The :class:`omicsclip.index.reference.ReferenceIndex` (built in memory or loaded from a folder).
    model
        The :class:`~omicsclip.api.model.OmicsClipModel` whose embeddings are indexed.
    path
        The index folder, or ``None`` for an index built in memory and not saved yet.
    """

    def __init__(self, index: Any, model: OmicsClipModel, path: str | Path | None = None) -> None:
        self.index = index
        self.model = model
        self._path = None if path is None else Path(path)

    @property
    def path(self) -> Path | None:
        """The index folder (``None`` until an index built in memory is saved)."""
        return self._path

    @property
    def n_cells(self) -> int:
        """Number of reference cells."""
        return self.index.n

    @property
    def label_keys(self) -> list[str]:
        """The obs columns whose labels are transferred."""
        return [] if self.index.labels is None else [str(c) for c in self.index.labels.columns]

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the index folder (atomically; the layout ``omicsclip index`` writes) and name the index by it.

        Parameters
        ----------
        path
            The index folder to create (what ``omicsclip query --index`` and :func:`load_index` read); never one
            holding the folder this index was loaded from.
        overwrite
            Replace an existing folder.

        Returns
        -------
        Path
            ``path``.
        """
        self._path = self.index.save(path, overwrite=overwrite)
        return self._path

    def query(self, data: Any, *, k: int | None = None, modality: str | None = None, config: ConfigLike = None,
              **options: Any) -> Any:
        """Look new cells up in the reference: cross-modal neighbours, imputed protein, transferred labels.

        Every query modality searches every reference index (RNA -> protein, protein -> RNA and the
        same-modality direction). RNA-only cells get an imputed protein profile with a confidence; every cell
        gets the labels of its nearest reference cells by weighted vote.

        Parameters
        ----------
        data
            New cells: an AnnData (RNA only, protein only or both), a MuData, an ``(rna, prot)`` pair, or
            path(s) of any ingest format.
        k
            Neighbours per cell and direction (default: ``query.k``).
        modality
            What a single-modality input holds (``rna`` or ``prot``; default: detect).
        config
            Settings (``query``, ``ingest`` and ``evaluate.ignore_labels``); see :func:`omicsclip.api.train_model`.
        **options
            Reader options, e.g. ``layer="counts"``.

        Returns
        -------
        anndata.AnnData
            One row per query cell (obs names = barcodes). ``X``: imputed CLR protein (var names = the
            reference's proteins; zero columns when nothing was imputed). ``obs``: ``confidence`` and
            ``top_similarity`` of the imputation; per label key, the transferred label (e.g. ``cell_type``;
            empty when no neighbour votes: reference cells labelled ``evaluate.ignore_labels`` never do; cells
            without any label, e.g. a pooled reference's unlabelled dataset, are looked past),
            ``<key>_vote_fraction`` (the label's share of the votes), ``<key>_voting_weight`` (the share of the
            neighbours' weight that voted: low among mostly ``unknown`` cells, however one-sided their few votes)
            and ``<key>_fraction_<class>``; ``mapping_similarity``, ``mapping_score``
            (in (0, 1], low for cells unlike any reference cell, e.g. of a type the reference lacks; see
            :mod:`omicsclip.index.mapping_score`) and ``out_of_reference`` (``mapping_score <= query.ood_alpha``),
            absent for an index built before omicsclip wrote the mapping calibration. ``uns["neighbours"]``: one row per (cell,
            direction, rank) with ``query_id, query_modality, index_modality, rank, reference_id,
            similarity``; ``uns["omicsclip_query"]``: the summary.
        """
        import anndata as ad

        from omicsclip.index.query import query

        cfg = resolve_config(config)
        with opened(data, ingest=cfg["ingest"], require="any", modality=modality, **options) as src:
            barcodes = pd.Index(src.barcodes).astype(str)
            res = query(src, self.model.trained, self.index, k=k, section=cfg["query"],
                        use_gpu=cfg["index"]["use_gpu"], ignore_labels=cfg["evaluate"]["ignore_labels"])
        obs = pd.DataFrame(index=barcodes)
        if res.imputed is not None:
            imp = res.imputed
            x = np.asarray(imp.X, np.float32)
            for col in imp.obs.columns:
                obs[col] = imp.obs[col].to_numpy()
            var = pd.DataFrame(index=pd.Index(imp.var_names.astype(str)))
        else:
            x = np.zeros((len(barcodes), 0), np.float32)
            var = pd.DataFrame(index=pd.Index([], dtype=str))
        if res.labels is not None:
            lab = res.labels.set_index("query_id").drop(columns=["query_modality"])
            lab.index = lab.index.astype(str)
            for col in lab.columns:
                obs[col] = lab[col].to_numpy()
        if res.cells is not None:
            for col in ("mapping_similarity", "mapping_score", "out_of_reference"):
                obs[col] = res.cells[col].to_numpy()
        out = ad.AnnData(X=x, obs=obs, var=var)
        out.uns["neighbours"] = res.neighbours
        out.uns["omicsclip_query"] = res.summary
        return out

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else repr(str(self.path))
        return (f"Reference({where}, {self.n_cells} cells, modalities={self.index.modalities}, "
                f"labels={self.label_keys})")


def build_index(data: Any, model: OmicsClipModel | str | Path, *, out: str | Path | None = None,
                label_key: str | None = None, config: ConfigLike = None, overwrite: bool = False,
                **options: Any) -> Reference:
    """Embed reference cells and index them (one FAISS index per modality, reference protein and labels).

    Parameters
    ----------
    data
        Reference cells with both modalities: a MuData, an AnnData with protein in ``obsm``, an
        ``(rna, prot)`` pair, or path(s) of any ingest format (a paired store too). All given cells are
        indexed (subset the AnnData to index fewer). Their protein (CLR, on the model's panel) is stored for
        imputation.
    model
        The model (or its folder).
    out
        The index folder to write (what ``omicsclip index`` writes); default: none, the index stays in memory
        (:meth:`Reference.save` writes it later).
    label_key
        obs column whose labels are transferred by :meth:`Reference.query` (default: ``index.label_key``,
        used when the column exists).
    config
        Index settings (the ``index`` section) and reader settings; see :func:`omicsclip.api.train_model`.
    overwrite
        Replace an existing ``out``.
    **options
        Reader options, e.g. ``layer="counts"``.

    Returns
    -------
    Reference
        The index, ready to query.
    """
    from omicsclip.index.faiss_index import set_threads
    from omicsclip.index.protein_sources import apply_protein_sources
    from omicsclip.index.reference import ReferenceIndex
    from omicsclip.io.panels import DATASET_COLUMN
    from omicsclip.model.preprocess import clr

    model = model if isinstance(model, OmicsClipModel) else load_model(model)
    cfg = resolve_config(config)
    section = cfg["index"]
    set_threads(int(section["threads"]))
    if out is not None:
        from omicsclip.io.atomic import check_writable

        check_writable(Path(out), overwrite=overwrite)
    barcodes, emb, extra = embed_cells(model, data, config=cfg, require="both", with_protein=True, **options)
    key = label_key if label_key is not None else str(section["label_key"] or "")
    obs = extra["obs"]
    labels = None
    if key and key in obs.columns:
        labels = pd.DataFrame({key: obs[key].astype(str).to_numpy()})
    elif label_key is not None:
        raise InputError(f"label_key={label_key!r}: no such obs column (has {', '.join(map(str, obs.columns))})")
    protein = clr(extra["protein"])  # a pooled reference (obs "dataset"): each shared protein from its best dataset
    sourcing = apply_protein_sources(protein, obs[DATASET_COLUMN].to_numpy() if DATASET_COLUMN in obs.columns else None,
                                     model.proteins, lambda r: emb["rna"][r], mode=str(section["protein_sources"]),
                                     seed=int(section["seed"]), labels=obs[key].to_numpy() if labels is not None else None,
                                     ignore_labels=cfg["evaluate"]["ignore_labels"])
    index = ReferenceIndex.build(embeddings={m: emb[m] for m in ("rna", "prot")}, cell_ids=list(barcodes),
                                 model_fingerprint=model.fingerprint, section=section,
                                 protein=protein, protein_names=model.proteins, labels=labels,
                                 source={"data": f"in-memory {type(data).__name__}", "model_dir": str(model.path),
                                         "protein_sources": sourcing},
                                 name="<in memory>" if out is None else str(out), search_gpu=section["use_gpu"])
    ref = Reference(index, model)
    if out is not None:
        ref.save(out, overwrite=overwrite)
    return ref


def load_index(path: str | Path, model: OmicsClipModel | str | Path, *, config: ConfigLike = None) -> Reference:
    """Open an index folder (``omicsclip index`` or :func:`build_index` output) for querying.

    Parameters
    ----------
    path
        The index folder.
    model
        The model that made the indexed embeddings (or its folder); another model is refused.
    config
        ``index.use_gpu`` decides whether searches run on a GPU.

    Returns
    -------
    Reference
        The loaded index.
    """
    from omicsclip.index.reference import ReferenceIndex

    model = model if isinstance(model, OmicsClipModel) else load_model(model)
    cfg = resolve_config(config)
    index = ReferenceIndex.load(path, model_fingerprint=model.fingerprint, use_gpu=cfg["index"]["use_gpu"],
                                model_name=str(model.path))
    return Reference(index, model, index.path)
