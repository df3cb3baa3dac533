"""Embeddings files: write them (:func:`embed_store`) and read them (:func:`open_embeddings`).

``embed_store`` writes RNA, protein and joint embeddings of every cell of a store as an AnnData zarr, with each
cell's fraction of the model's proteins missing from its panel (obs :data:`PROT_MISSING_COLUMN`);
:func:`open_embeddings` is the one reader every later stage (index, heads, report) uses.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.conventions import EMBEDDING_KEYS, OBSM_JOINT, OBSM_PROT, OBSM_RNA
from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import dumps_json
from omicsclip.model.alignment import protein_missing_fraction
from omicsclip.model.modelio import joint_embedding, load_model
from omicsclip.progress import Progress

log = logging.getLogger(__name__)

UNSEEN = "unseen"  # split label of cells that are not in the model's split (another store)
#: obs column of an embeddings file: per cell, the fraction of the model's proteins its panel lacked (0 = all there);
#: the few-label heads weigh the protein embedding by 1 minus it.
PROT_MISSING_COLUMN = "omicsclip_prot_missing_fraction"


def embed_store(store: str | Path, model_dir: str | Path, out: str | Path, *, overwrite: bool = False,
                device: str = "cpu", batch_size: int = 4096, chunk_cells: int = 20_000) -> Path:
    """Embed every cell of a paired store and write an AnnData zarr (atomically; progress per chunk).

    Parameters
    ----------
    store
        Paired store (``omicsclip ingest``).
    model_dir
        Trained model folder.
    out
        Output ``.zarr``: obs = the store's obs plus ``split`` (train/val/test, or ``"unseen"`` for cells the
        model's split does not list) and :data:`PROT_MISSING_COLUMN` (the fraction of the model's proteins the
        store's panel lacks); obsm ``X_omicsclip_rna``, ``X_omicsclip_prot``, ``X_omicsclip_joint``;
        ``uns["omicsclip"]`` with the model fingerprint and the feature matching report.
    overwrite
        Replace an existing output.
    device
        Where to run the encoders (``cpu``, ``cuda``, ``auto``).
    batch_size, chunk_cells
        Cells per forward pass / per chunk read from the store (bounded memory).
    """
    import anndata as ad
    import zarr
    from anndata.io import write_elem

    from omicsclip.io.store import store_info
    from omicsclip.model.device import resolve_device

    out = Path(out)
    with atomic_path(out, overwrite=overwrite, inputs=(store, model_dir)) as tmp:
        model = load_model(model_dir, resolve_device(device))
        info = store_info(store)
        d, n = model.embed_dim, len(info["obs"])
        obs = info["obs"].copy()
        obs.index = obs.index.astype(str)
        split = model.split.reindex(obs.index).fillna(UNSEEN)
        if (split == UNSEEN).any():
            log.info("%d of %d cells are not in the model's split (labelled %r)", int((split == UNSEEN).sum()),
                     len(obs), UNSEEN)
        obs["split"] = pd.Categorical(split.to_numpy(), categories=["train", "val", "test", UNSEEN])
        missing = np.zeros(n, np.float32)
        obs[PROT_MISSING_COLUMN] = missing
        uns = {"model_fingerprint": model.fingerprint, "model_dir": str(Path(model_dir).resolve()),
               "store": str(Path(store).resolve()), "embed_dim": d}
        # the AnnData skeleton first, then the embeddings written into it chunk by chunk: memory is one chunk,
        # not three (cells x d) matrices and their copies (a 1M-cell atlas: ~4 GB)
        with ad.settings.override(zarr_write_format=2), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Writing zarr v2", category=UserWarning)
            ad.AnnData(obs=obs).write_zarr(tmp)
        root = zarr.open_group(str(tmp), mode="r+", use_consolidated=False)  # consolidated again at the end
        arrays = {}
        for key in (OBSM_RNA, OBSM_PROT, OBSM_JOINT):
            arrays[key] = root["obsm"].create_array(key, shape=(n, d), chunks=(max(1, min(chunk_cells, n)), d),
                                                    dtype="float32")
            arrays[key].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        report: dict = {}
        with Progress(n, "embed", "cells", logger=log) as progress:
            for sl, e, frac, _ in iter_store_embeddings(model, store, info, chunk_cells=chunk_cells,
                                                        batch_size=batch_size):
                arrays[OBSM_RNA][sl] = e["rna"]
                arrays[OBSM_PROT][sl] = e["prot"]
                arrays[OBSM_JOINT][sl] = joint_embedding(e["rna"], e["prot"])
                missing[sl] = frac
                report = model.last_report
                progress.update(sl.stop - sl.start)
        obs[PROT_MISSING_COLUMN] = missing
        write_elem(root, "obs", obs)
        write_elem(root, "uns", {"omicsclip": {**uns, "feature_report_json": dumps_json(report, compact=True)}})
        zarr.consolidate_metadata(str(tmp))
    log.info("wrote %s: %d cells x %d dims (model %s...)", out, len(obs), d, model.fingerprint[:12])
    return out


def iter_store_embeddings(model: Any, store: str | Path, info: Mapping[str, Any], *, chunk_cells: int = 20_000,
                          batch_size: int = 4096) -> Iterator[tuple[slice, dict[str, np.ndarray], np.ndarray, np.ndarray]]:
    """Embed a paired store's cells chunk by chunk: ``(rows, {"rna", "prot"}, protein-missing fraction, protein)``.

    Each dataset of a store pooled from several enters the model with the genes and proteins it measured (the
    store's zeros outside them are unmeasured, not counts), so each is held to the model's limits and gets its own
    protein-missing fraction. ``protein`` is the chunk's raw protein counts (store columns, NaN outside a cell's
    panel). What :func:`embed_store` writes and the notebook API's ``embed`` of a pooled store returns.

    Parameters
    ----------
    model
        A :class:`omicsclip.model.modelio.TrainedModel` (its ``last_report`` is the last group's).
    store, info
        The paired store and its :func:`omicsclip.io.store.store_info`.
    chunk_cells, batch_size
        Cells read at a time / per forward pass.
    """
    from omicsclip.io.panels import (
        GENE_PANELS_KEY,
        column_names,
        dataset_groups,
        panels_of,
        store_gene_masks,
        store_protein_masks,
    )
    from omicsclip.io.store import iter_store

    genes = [str(g) for g in info["genes"].index]
    proteins = [str(p) for p in info["proteins"].index]
    gmask, pmask = store_gene_masks(info), store_protein_masks(info)
    names = sorted(panels_of(info["uns"]) or panels_of(info["uns"], GENE_PANELS_KEY) or [])
    d = model.embed_dim
    for rna, prot, sl in iter_store(store, chunk_cells):
        e = {"rna": np.empty((sl.stop - sl.start, d), np.float32)}
        e["prot"] = np.empty_like(e["rna"])
        frac = np.zeros(sl.stop - sl.start, np.float32)
        for code, rows, gcols, pcols in dataset_groups(None if gmask is None else (gmask[0][sl], gmask[1]),
                                                       None if pmask is None else (pmask[0][sl], pmask[1])):
            try:
                part = model.embed(rna[rows][:, gcols], prot[rows][:, pcols], genes=column_names(genes, gcols),
                                   proteins=column_names(proteins, pcols), batch_size=batch_size)
            except InputError as exc:
                raise InputError(f"{store}{f', dataset {names[code]!r}' if code >= 0 else ''}: {exc}") from None
            e["rna"][rows], e["prot"][rows] = part["rna"], part["prot"]
            frac[rows] = protein_missing_fraction(model.last_report["prot"], len(part["prot"]))
        yield sl, e, frac, prot


@dataclass
class Embeddings:
    """An ``omicsclip embed`` output, opened lazily: obs and uns in memory, each embedding read on demand.

    Use :func:`open_embeddings` to open one. ``modalities`` lists the embeddings present (``rna``, ``prot``,
    ``joint``, in that order); :meth:`matrix` reads one, optionally only some rows (bounded memory).
    :meth:`obsm` reads any other dense ``obsm`` array the file holds (e.g. ``X_pca_rna``), listed in ``obsm_keys``.
    """

    path: Path
    obs: pd.DataFrame
    uns: dict[str, Any]
    modalities: list[str]
    _obsm: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def obsm_keys(self) -> list[str]:
        """The dense ``obsm`` arrays of the file (the embeddings and any others)."""
        return list(self._obsm)

    @property
    def n_cells(self) -> int:
        """Number of cells (rows)."""
        return len(self.obs)

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the model that made the embeddings (``uns["omicsclip"]["model_fingerprint"]``)."""
        meta = self.uns.get("omicsclip")
        fp = meta.get("model_fingerprint") if isinstance(meta, dict) else None
        return None if fp is None else str(fp)

    def prot_missing_fraction(self) -> np.ndarray:
        """Per cell, the fraction of the model's proteins missing from its panel (float32; 0 = all there).

        Read from obs :data:`PROT_MISSING_COLUMN`. Files written before the column existed: the panel-level
        ``missing_fraction`` of the protein feature report in ``uns["omicsclip"]`` for every cell; a file with
        neither (not written by ``omicsclip embed``) has no record of missing proteins and gets 0 (every protein
        there, the heads' behaviour before the column existed).
        """
        if PROT_MISSING_COLUMN in self.obs.columns:
            frac = pd.to_numeric(self.obs[PROT_MISSING_COLUMN], errors="coerce").to_numpy(np.float64)
            bad = ~np.isfinite(frac) | (frac < 0) | (frac > 1)
            if bad.any():
                raise InputError(f"{self.path}: obs[{PROT_MISSING_COLUMN!r}] has {int(bad.sum())} values outside "
                                 "[0, 1] (a fraction of missing proteins)")
            return frac.astype(np.float32)
        meta = self.uns.get("omicsclip")
        raw = meta.get("feature_report_json") if isinstance(meta, dict) else None
        if raw is not None:
            import json

            try:
                prot = json.loads(str(raw)).get("prot")
                return protein_missing_fraction(prot, self.n_cells) if prot else np.zeros(self.n_cells, np.float32)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise InputError(f"{self.path}: uns['omicsclip']['feature_report_json'] is not a feature report "
                                 f"({type(exc).__name__}: {exc})") from None
        return np.zeros(self.n_cells, np.float32)

    def lazy(self, modalities: Sequence[str], rows: np.ndarray | slice | None = None) -> Mapping[str, np.ndarray]:
        """Return ``{modality: embeddings}`` read from the file on access (one modality in memory at a time)."""
        return _LazyMatrices(self, modalities, rows)

    def require(self, *modalities: str) -> None:
        """Raise :class:`InputError` naming the file unless every one of ``modalities`` is present."""
        for mod in modalities:
            if mod not in self.modalities:
                raise InputError(f"{self.path}: obsm[{EMBEDDING_KEYS[mod]!r}] missing (the {mod} embedding); "
                                 "is this an `omicsclip embed` output?")

    def matrix(self, modality: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Read the ``modality`` embedding as float32 (cells x d): all rows, or only ``rows``.

        Parameters
        ----------
        modality
            ``rna``, ``prot`` or ``joint``.
        rows
            Row selection (sorted indices or a slice); ``None`` reads every cell.
        """
        self.require(modality)
        return self.obsm(EMBEDDING_KEYS[modality], rows)

    def obsm(self, key: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Read the dense ``obsm[key]`` array as float32: all rows, or only ``rows``.

        Parameters
        ----------
        key
            One of :attr:`obsm_keys`.
        rows
            Row selection (sorted indices or a slice); ``None`` reads every cell.
        """
        if key not in self._obsm:
            raise InputError(f"{self.path}: no obsm[{key!r}]")
        arr = self._obsm[key]
        if rows is None:
            rows = slice(None)
        try:
            if isinstance(rows, slice) or not hasattr(arr, "get_orthogonal_selection"):
                out = arr[rows]
            else:
                out = arr.get_orthogonal_selection((np.asarray(rows), slice(None)))
            return np.asarray(out, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - a damaged chunk is a bad input file, one line
            raise InputError(f"{self.path}: cannot read obsm[{key!r}] ({type(exc).__name__}: {exc})") from None


class _LazyMatrices(Mapping):
    """``{modality: embeddings}`` read from the file on access (one modality in memory at a time)."""

    def __init__(self, emb: Any, modalities: Sequence[str], rows: Any) -> None:
        self._emb, self._mods, self._rows = emb, list(modalities), rows

    def __getitem__(self, m: str) -> np.ndarray:
        if m not in self._mods:
            raise KeyError(m)
        return self._emb.matrix(m, self._rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self._mods)

    def __len__(self) -> int:
        return len(self._mods)


def open_embeddings(path: str | Path) -> Embeddings:
    """Open an ``omicsclip embed`` output (AnnData ``.zarr``, or ``.h5ad``) without reading its matrices.

    Parameters
    ----------
    path
        The embeddings file; a missing, unreadable or foreign file is one :class:`InputError` naming it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: embeddings not found (the file does not exist)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix == ".h5ad":
                import anndata as ad

                adata = ad.read_h5ad(path)
                obs, uns = adata.obs, dict(adata.uns)
                obsm = {key: np.asarray(a) for key, a in adata.obsm.items() if isinstance(a, np.ndarray)}
            else:
                import zarr
                from anndata.io import read_elem

                root = zarr.open_group(str(path), mode="r")
                obs = read_elem(root["obs"])
                uns = read_elem(root["uns"]) if "uns" in root else {}
                obsm = dict(root["obsm"].arrays()) if "obsm" in root else {}
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file, one line
        raise InputError(f"{path}: cannot read as embeddings (AnnData zarr) ({type(exc).__name__}: {exc})") from None
    obsm = {key: a for key, a in obsm.items() if len(a.shape) == 2}
    arrays = {mod: obsm[key] for mod, key in EMBEDDING_KEYS.items() if key in obsm}
    if not arrays:
        raise InputError(f"{path}: no obsm key of {', '.join(EMBEDDING_KEYS.values())}; "
                         "is this an `omicsclip embed` output?")
    for mod, arr in arrays.items():
        if len(arr.shape) != 2 or arr.shape[0] != len(obs):
            raise InputError(f"{path}: obsm[{EMBEDDING_KEYS[mod]!r}] has shape {tuple(arr.shape)}, "
                             f"expected ({len(obs)}, d)")
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    return Embeddings(path=path, obs=obs, uns=uns if isinstance(uns, dict) else {}, modalities=list(arrays),
                      _obsm=obsm)
