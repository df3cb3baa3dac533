"""Train and load models from a notebook: :func:`train_model`, :func:`load_model` and :class:`OmicsClipModel`.

Training always runs on a paired store (the model records which one), through
:func:`omicsclip.train.run.train_model`, the function ``omicsclip train`` calls. Data given in memory or as other
files is first written to a store: by default ``<out>_store.zarr`` next to the model folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.api._inputs import (
    ConfigLike,
    embedding_keys,
    is_path_input,
    opened,
    resolve_config,
    write_obsm,
)
from omicsclip.errors import InputError

log = logging.getLogger(__name__)

#: ``obsm`` prefix of the embeddings written by :meth:`OmicsClipModel.embed` (``X_omicsclip_rna`` etc.).
DEFAULT_KEY = "X_omicsclip"


def default_store(out: str | Path) -> Path:
    """Return where :func:`train_model` writes the training store of data that is not a store: ``<out>_store.zarr``.

    Parameters
    ----------
    out
        The model folder.

    Returns
    -------
    Path
        A sibling of ``out``.
    """
    out = Path(out)
    return out.with_name(f"{out.name}_store.zarr")


def _is_store(path: Path) -> bool:
    from omicsclip.io.formats import detect_format

    try:
        return detect_format([path], "auto") == "zarr"
    except InputError:
        return False


def write_training_store(data: Any, store: str | Path, *, ingest: Mapping[str, Any], overwrite: bool = False,
                         **options: Any) -> Path:
    """Write data in any form to a new paired store (the input of :func:`train_model`).

    Runs :func:`omicsclip.io.ingest.ingest_from_config` (what ``omicsclip ingest`` runs) on paths and objects in
    memory alike: the same chunked ingest loop, QC thresholds (``ingest.min_counts_rna`` / ``min_counts_prot``),
    QC summary and provenance in ``uns`` (for an object: its type, shape and a sha256 of its obs/var names).

    Parameters
    ----------
    data
        Path(s) of any ingest format, a MuData, an AnnData with protein in ``obsm`` or an ``(rna, prot)`` pair.
    store
        The store to create.
    ingest
        The ``ingest:`` config section.
    overwrite
        Replace an existing store.
    **options
        Reader options that win over the section (e.g. ``layer="counts"``).

    Returns
    -------
    Path
        ``store``.
    """
    from omicsclip.io.ingest import ingest_from_config

    if is_path_input(data):
        data = [data] if isinstance(data, str | Path) else list(data)
    return ingest_from_config(data, Path(store), ingest, overwrite=overwrite, **options)


class OmicsClipModel:
    """A trained omicsclip model (a model folder) with notebook-friendly methods.

    Get one from :func:`train_model` or :func:`load_model`. The underlying
    :class:`omicsclip.model.modelio.TrainedModel` is :attr:`trained`.

    Attributes
    ----------
    path
        The model folder (what ``omicsclip train`` writes).
    trained
        The loaded :class:`~omicsclip.model.modelio.TrainedModel` (encoders, preprocessing, split, config).
    """

    def __init__(self, trained: Any) -> None:
        self.trained = trained
        self.path = Path(trained.path)

    @property
    def fingerprint(self) -> str:
        """sha256 of the weights; indices and heads record it and refuse another model."""
        return self.trained.fingerprint

    @property
    def config(self) -> dict[str, Any]:
        """The full config of the training run."""
        return self.trained.config

    @property
    def genes(self) -> list[str]:
        """The model's input genes."""
        return self.trained.genes

    @property
    def proteins(self) -> list[str]:
        """The model's protein panel."""
        return self.trained.proteins

    @property
    def store(self) -> Path | None:
        """The paired store the model was trained on (recorded in ``model.json``)."""
        s = self.trained.meta.get("store")
        return None if s is None else Path(s)

    @property
    def split(self) -> pd.Series:
        """The training split: barcode -> ``train`` / ``val`` / ``test``."""
        return self.trained.split

    @property
    def history(self) -> list[dict[str, Any]]:
        """The training log (``train_log.jsonl``, read by :func:`omicsclip.evaluation.selection.read_train_log`)."""
        from omicsclip.evaluation.selection import read_train_log

        path = self.path / "train_log.jsonl"
        return read_train_log(path) if path.exists() else []

    def embed(self, data: Any, *, key_added: str | None = DEFAULT_KEY, modality: str | None = None,
              batch_size: int | None = None, config: ConfigLike = None, **options: Any) -> dict[str, np.ndarray]:
        """Embed cells; write the embeddings to ``obsm`` (scanpy's ``key_added`` convention) and return them.

        Parameters
        ----------
        data
            A MuData, an AnnData (protein in ``obsm``, or one modality), an ``(rna, prot)`` pair of AnnData,
            or path(s) of any ingest format. RNA, protein or both. A store pooled from several datasets
            (``omicsclip pool``) is embedded as ``omicsclip embed`` embeds it: each dataset with its own genes
            and panel.
        key_added
            ``obsm`` prefix: writes ``<key_added>_rna``, ``<key_added>_prot`` and, with both modalities,
            ``<key_added>_joint`` (``X_omicsclip_*`` by default, what ``omicsclip embed`` writes) into the
            MuData/AnnData (both AnnData of a pair), matched by barcode. ``None`` writes nothing.
        modality
            What a single-modality input holds (``rna`` or ``prot``; default: detect).
        batch_size
            Cells per forward pass (default: the encoder's).
        config
            Reader settings (the ``ingest`` section) and ``query.chunk_cells``; see :func:`train_model`.
        **options
            Reader options, e.g. ``layer="counts"``, ``protein_key="adt"``.

        Returns
        -------
        dict
            ``"rna"``, ``"prot"`` and ``"joint"`` (those available): L2-normalised float32 arrays, one row per
            cell in the input's cell order.

        Examples
        --------
        >>> emb = model.embed(mdata)                       # doctest: +SKIP
        >>> sc.pp.neighbors(mdata.mod["rna"], use_rep="X_omicsclip_joint")  # doctest: +SKIP
        """
        barcodes, emb, _ = embed_cells(self, data, modality=modality, batch_size=batch_size, config=config,
                                       **options)
        if key_added is not None:
            keys = embedding_keys(key_added)
            for m, arr in emb.items():
                write_obsm(data, barcodes, keys[m], arr)
        return emb

    def __repr__(self) -> str:
        return (f"OmicsClipModel({str(self.path)!r}, {len(self.genes)} genes, {len(self.proteins)} proteins, "
                f"dim={self.trained.embed_dim}, fingerprint={self.fingerprint[:12]})")


def embed_cells(model: OmicsClipModel, data: Any, *, modality: str | None = None, batch_size: int | None = None,
                config: ConfigLike = None, require: str = "any", with_protein: bool = False,
                **options: Any) -> tuple[pd.Index, dict[str, np.ndarray], dict[str, Any]]:
    """Embed every cell of ``data`` chunk by chunk with :meth:`TrainedModel.embed <omicsclip.model.TrainedModel.embed>`.

    Parameters
    ----------
    model
        The model.
    data, modality, batch_size, config, **options
        As in :meth:`OmicsClipModel.embed`.
    require
        ``both`` or ``any`` modality.
    with_protein
        Also return the raw protein counts on the model's panel (``extra["protein"]``).

    Returns
    -------
    tuple
        Barcodes, ``{"rna", "prot", "joint"}`` embeddings (those available), and ``extra``: ``obs`` (the cells'
        annotations), ``protein`` (with ``with_protein``), ``feature_report`` and ``prot_missing_fraction`` per
        cell (the input's panel against the model's; for a pooled store, each dataset's own).
    """
    from omicsclip.model.alignment import protein_missing_fraction
    from omicsclip.model.modelio import joint_embedding

    cfg = resolve_config(config)
    kw = {} if batch_size is None else {"batch_size": int(batch_size)}
    pooled = _pooled_store_info(data)
    if pooled is not None:  # each dataset with its own genes and panel, as omicsclip embed does
        return _embed_pooled_store(model, Path(data), pooled, chunk_cells=int(cfg["query"]["chunk_cells"]),
                                   with_protein=with_protein, **kw)
    parts: dict[str, list[np.ndarray]] = {"rna": [], "prot": []}
    obs, prot = [], []
    with opened(data, ingest=cfg["ingest"], require=require, modality=modality, model_proteins=model.proteins,
                **options) as src:
        barcodes = pd.Index(src.barcodes).astype(str)
        col = None
        if with_protein and src.proteins is not None:
            col = pd.Index(src.proteins).get_indexer(model.proteins)
            if (col < 0).any():
                missing = [p for p, c in zip(model.proteins, col, strict=True) if c < 0]
                raise InputError(f"reference data lack the model's proteins {', '.join(missing[:5])}")
        for chunk in src.iter_chunks(int(cfg["query"]["chunk_cells"])):
            e = model.trained.embed(chunk.rna, chunk.prot, genes=src.genes if chunk.rna is not None else None,
                                    proteins=src.proteins if chunk.prot is not None else None, **kw)
            for m, arr in e.items():
                parts[m].append(arr)
            obs.append(chunk.obs)
            if col is not None:
                prot.append(np.asarray(chunk.prot, np.float32)[:, col])
    emb = {m: np.concatenate(p) for m, p in parts.items() if p}
    if "rna" in emb and "prot" in emb:
        emb["joint"] = joint_embedding(emb["rna"], emb["prot"])
    report = dict(model.trained.last_report)
    extra = {"obs": pd.concat(obs) if obs else pd.DataFrame(index=barcodes), "feature_report": report,
             "prot_missing_fraction": protein_missing_fraction(report.get("prot"), len(barcodes))}
    if col is not None:
        extra["protein"] = np.concatenate(prot)
    return barcodes, emb, extra


def _pooled_store_info(data: Any) -> dict[str, Any] | None:
    """:func:`omicsclip.io.store.store_info` of ``data`` when it names a store pooled from several datasets."""
    if not (isinstance(data, str | Path) and _is_store(Path(data))):
        return None
    from omicsclip.io.store import is_pooled_store, store_info

    return store_info(data) if is_pooled_store(data) else None  # a plain store's obs is read once, by the reader


def _embed_pooled_store(model: OmicsClipModel, store: Path, info: dict[str, Any], *, chunk_cells: int,
                        with_protein: bool, batch_size: int = 4096
                        ) -> tuple[pd.Index, dict[str, np.ndarray], dict[str, Any]]:
    """:func:`embed_cells` of a pooled store, through :func:`omicsclip.model.embed.iter_store_embeddings`."""
    from omicsclip.model.embed import iter_store_embeddings
    from omicsclip.model.modelio import joint_embedding

    parts: dict[str, list[np.ndarray]] = {"rna": [], "prot": []}
    prot, missing = [], []
    col = pd.Index([str(p) for p in info["proteins"].index]).get_indexer(model.proteins)
    if with_protein and (col < 0).any():
        lacking = [p for p, c in zip(model.proteins, col, strict=True) if c < 0]
        raise InputError(f"{store}: reference data lack the model's proteins {', '.join(lacking[:5])}")
    for _, e, frac, chunk_prot in iter_store_embeddings(model.trained, store, info, chunk_cells=chunk_cells,
                                                        batch_size=batch_size):
        for m in parts:
            parts[m].append(e[m])
        missing.append(frac)
        if with_protein:
            prot.append(np.asarray(chunk_prot, np.float32)[:, col])  # NaN outside a cell's panel
    emb = {m: np.concatenate(p) for m, p in parts.items()}
    emb["joint"] = joint_embedding(emb["rna"], emb["prot"])
    obs = info["obs"].copy()
    obs.index = obs.index.astype(str)
    extra: dict[str, Any] = {"obs": obs, "feature_report": dict(model.trained.last_report),
                             "prot_missing_fraction": np.concatenate(missing)}  # per cell: each dataset's own
    if with_protein:
        extra["protein"] = np.concatenate(prot)
    return pd.Index(obs.index), emb, extra


def train_model(data: Any, out: str | Path, *, config: ConfigLike = None, store: str | Path | None = None,
          overwrite: bool = False, resume: bool = False, device: str | None = None,
          **options: Any) -> OmicsClipModel:
    """Train the RNA/protein dual encoder and return the model (the folder ``omicsclip train`` writes).

    Parameters
    ----------
    data
        Paired cells: a MuData (``rna`` + ``prot``), an AnnData with protein counts in ``obsm``, an
        ``(rna, prot)`` pair of AnnData (in memory, backed or dask), path(s) of any ingest format, or a
        paired store ``.zarr`` (used as is). Raw counts.
    out
        The model folder to create.
    config
        ``None`` (``configs/default.yaml``), a YAML file, a nested mapping (``{"train": {"epochs": 20}}``) or
        ``section.key=value`` strings (``["train.epochs=20"]``).
    store
        Where data that is not a store is written first (default: :func:`default_store`, ``<out>_store.zarr``).
        The model records it; :func:`omicsclip.api.evaluate` and the CLI's ``embed``/``evaluate`` read it.
    overwrite
        Replace an existing model folder (and store).
    resume
        Continue an interrupted run from its last checkpoint (an existing store is reused as is).
    device
        ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (overrides ``train.device``).
    **options
        Reader options for in-memory or file data, e.g. ``layer="counts"``, ``protein_key="adt"``.

    Returns
    -------
    OmicsClipModel
        The trained model, loaded on the CPU.

    Examples
    --------
    >>> import omicsclip as oc                                        # doctest: +SKIP
    >>> model = oc.train_model(mdata, "models/pbmc", config={"train": {"epochs": 50}})  # doctest: +SKIP
    """
    from omicsclip.train.run import train_model

    cfg = resolve_config(config)
    if device is not None:
        cfg["train"]["device"] = device
    out = Path(out)
    if is_path_input(data) and isinstance(data, str | Path) and _is_store(Path(data)):
        if store is not None and Path(store).resolve() != Path(data).resolve():
            raise InputError(f"store={store}: data {data} is already a paired store; leave store unset")
        store_path = Path(data)
    else:
        store_path = Path(store) if store is not None else default_store(out)
        if not (resume and store_path.exists()):
            write_training_store(data, store_path, ingest=cfg["ingest"], overwrite=overwrite, **options)
            log.info("wrote the training store %s", store_path)
    train_model(store_path, out, cfg, resume=resume, overwrite=overwrite)
    return load_model(out)


def load_model(path: str | Path, device: str = "cpu") -> OmicsClipModel:
    """Load a model folder written by :func:`train_model` or ``omicsclip train``.

    Parameters
    ----------
    path
        The model folder.
    device
        Where the encoders run: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    Returns
    -------
    OmicsClipModel
        The model; a missing or corrupt folder is an :class:`~omicsclip.errors.InputError`.
    """
    from omicsclip.model.device import resolve_device
    from omicsclip.model.modelio import load_model as _load

    return OmicsClipModel(_load(path, resolve_device(device)))
