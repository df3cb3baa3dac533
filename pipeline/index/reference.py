"""The reference index folder: one FAISS index per modality plus what query needs to impute and transfer labels.

Layout of ``INDEX_DIR`` (written atomically as one folder)::

    rna.faiss, prot.faiss       CPU faiss indices (inner product on unit vectors), positions = rows below
    cell_ids.tsv                the ordered reference cell ids (column ``cell_id``)
    reference_protein.npy       optional: n x P CLR-normalised reference protein (float32, memory-mapped on load)
    reference_obs.parquet       optional: reference labels (one column per label key, row = position)
    mapping_calibration.npy     modalities x m sorted leave-one-out statistics of a reference sample (the mapping
                                score's calibration, :mod:`omicsclip.index.mapping_score`; older folders lack it)
    meta.json                   metric, dim, factory, kind, n, params, model_fingerprint, proteins, label keys,
                                sha256 of every file (a corrupt or swapped file is refused on load)
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.conventions import MODALITIES
from omicsclip.errors import InputError
from omicsclip.index.faiss_index import (
    METRIC,
    IndexParams,
    build_index,
    factory_string,
    gpu_enabled,
    resolve_params,
    search,
    set_search_params,
    to_gpu,
)
from omicsclip.index.mapping_score import MappingCalibration, calibration_sample, leave_one_out
from omicsclip.index.refmeta import (
    FORMAT_VERSION,
    IDS,
    MAPPING,
    META,
    OBS,
    PROTEIN,
    kind_of,
    read_ids,
    read_meta,
)
from omicsclip.io.atomic import atomic_path, check_writable, temp_sibling
from omicsclip.io.hashing import sha256_file
from omicsclip.io.jsonfile import write_json
from omicsclip.io.tsv import to_tsv
from omicsclip.model.statecheck import one_line, show

log = logging.getLogger(__name__)


def _version() -> str:
    from omicsclip import __version__

    return __version__


def write_index_dir(
    out_dir: str | Path,
    *,
    embeddings: Mapping[str, np.ndarray],
    cell_ids: Sequence[str],
    model_fingerprint: str,
    section: Mapping[str, Any],
    protein: np.ndarray | None = None,
    protein_names: Sequence[str] | None = None,
    labels: pd.DataFrame | None = None,
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Build one index per modality and write the reference folder atomically.

    :meth:`ReferenceIndex.build`, then :meth:`ReferenceIndex.save`.

    Parameters
    ----------
    out_dir
        The index folder to create.
    embeddings, cell_ids, model_fingerprint, section, protein, protein_names, labels, source
        As in :meth:`ReferenceIndex.build`.
    overwrite
        Replace an existing folder.

    Returns
    -------
    Path
        ``out_dir``.
    """
    check_writable(Path(out_dir), overwrite=overwrite)  # before the work
    spill = temp_sibling(out_dir)  # a temporary of the output: swept like one if this process dies
    spill.mkdir()
    try:
        ref = ReferenceIndex.build(embeddings=embeddings, cell_ids=cell_ids, model_fingerprint=model_fingerprint,
                                   section=section, protein=protein, protein_names=protein_names, labels=labels,
                                   source=source, name=str(out_dir), spill=spill)
        return ref.save(out_dir, overwrite=overwrite)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


class ReferenceIndex:
    """A reference: searchable indices, cell ids, reference protein and labels.

    :meth:`load` opens an index folder (``protein`` memory-mapped, so large references do not need to fit in memory
    twice); :meth:`build` makes one in memory from embeddings and :meth:`save` writes it as a folder.
    """

    def __init__(self, path: Path, meta: dict[str, Any], indices: dict[str, Any], cell_ids: np.ndarray,
                 protein: np.ndarray | None, labels: pd.DataFrame | None, *, backing: Path | None = None,
                 mapping: MappingCalibration | None = None) -> None:
        self.path = path
        self._backing = backing  # the folder whose files this reference still reads (memory-mapped protein)
        self.meta = meta
        self.indices = indices
        self.cell_ids = cell_ids
        self.protein = protein
        self.labels = labels
        self.mapping = mapping  # the mapping score's calibration; None for index folders written before it
        self.params = IndexParams.from_dict(meta["params"])

    @property
    def dim(self) -> int:
        """Embedding dimension of the indices."""
        return int(self.meta["dim"])

    @property
    def n(self) -> int:
        """Number of reference cells."""
        return int(self.meta["n"])

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model that made the reference embeddings."""
        return str(self.meta["model_fingerprint"])

    @property
    def modalities(self) -> list[str]:
        """Modalities with an index (``rna``, ``prot``), in order."""
        return list(self.indices)

    @property
    def protein_names(self) -> list[str] | None:
        """Protein names of the stored reference protein (columns), or ``None`` without one."""
        return self.meta.get("proteins")

    @classmethod
    def build(
        cls,
        *,
        embeddings: Mapping[str, np.ndarray],
        cell_ids: Sequence[str],
        model_fingerprint: str,
        section: Mapping[str, Any],
        protein: np.ndarray | None = None,
        protein_names: Sequence[str] | None = None,
        labels: pd.DataFrame | None = None,
        source: Mapping[str, Any] | None = None,
        name: str = "<in memory>",
        search_gpu: bool | str = False,
        spill: Path | None = None,
    ) -> ReferenceIndex:
        """Build one index per modality in memory: a reference to search now and :meth:`save` when wanted.

        Parameters
        ----------
        embeddings
            ``{"rna": (n, d), "prot": (n, d)}`` L2-normalised embeddings of the same cells (at least one modality).
        cell_ids
            The ``n`` reference cell ids, in row order.
        model_fingerprint
            Fingerprint of the model that produced the embeddings; queries with another model are refused.
        section
            The ``index:`` config section (``use_gpu`` decides where the indices are built; ``mapping_k``,
            ``mapping_cells`` and ``seed`` the mapping score's calibration sample).
        protein, protein_names
            Optional ``(n, P)`` CLR-normalised reference protein and its column names (enables imputation).
        labels
            Optional frame of label columns (``n`` rows, row order = ``cell_ids``) for label transfer.
        source
            Free-form provenance recorded in ``meta.json``.
        name
            The reference's ``path`` in messages until it is saved (e.g. the folder it will be written to).
        search_gpu
            ``auto`` | ``True`` | ``False``: move flat/IVF indices to a GPU for searching, as :meth:`load` does.
        spill
            A folder to write each modality's index to as soon as it is built (bounded memory for
            :func:`write_index_dir`); such a reference can only be saved (:meth:`save`), not searched.

        Returns
        -------
        ReferenceIndex
            ``meta`` as ``meta.json`` will hold it, less the files' sha256 (written by :meth:`save`).
        """
        out_dir = name
        mods = [m for m in MODALITIES if m in embeddings]
        if not mods:
            raise InputError(f"{out_dir}: no embeddings to index (expected keys {MODALITIES})")
        ids = [str(c) for c in cell_ids]
        n = len(ids)
        if n == 0:
            raise InputError(f"{out_dir}: no reference cells to index")
        if len(set(ids)) != n:
            raise InputError(f"{out_dir}: reference cell ids are not unique")
        if protein is not None:
            protein = np.ascontiguousarray(protein, dtype=np.float32)
            if protein.shape[0] != n or protein_names is None or protein.shape[1] != len(protein_names):
                raise InputError(f"{out_dir}: reference protein shape {protein.shape} does not match {n} cells "
                                 f"x {0 if protein_names is None else len(protein_names)} protein names")
        if labels is not None and len(labels) != n:
            raise InputError(f"{out_dir}: {len(labels)} label rows for {n} reference cells")

        use_gpu = section["use_gpu"]
        seed = int(section["seed"])
        built: dict[str, Any] = {}
        timings: dict[str, float] = {}
        dim, params = None, None
        mk, nulls = min(int(section["mapping_k"]), n - 1), {}  # the mapping score's k and calibration samples
        for m in mods:  # one modality's embeddings in memory at a time (a lazy mapping reads them here)
            x = np.asarray(embeddings[m], dtype=np.float32)
            if x.ndim != 2 or x.shape[0] != n:
                raise InputError(f"{out_dir}: {m} embeddings have shape {x.shape}, expected ({n}, d)")
            if dim is None:
                dim, params = x.shape[1], resolve_params(n, x.shape[1], section)
            elif x.shape[1] != dim:
                raise InputError(f"{out_dir}: modality embeddings differ in dimension ({mods[0]}: {dim}, "
                                 f"{m}: {x.shape[1]})")
            # inner product = cosine similarity only for finite unit vectors (einsum: no cells x d temporary)
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
            bad = ~np.isfinite(norms) | (np.abs(norms - 1) > 1e-3)
            if bad.any():
                raise InputError(f"{out_dir}: {int(bad.sum())} of {n} {m} embeddings are not finite unit vectors "
                                 f"(norms {np.nanmin(norms):.3g}..{np.nanmax(norms):.3g}); index L2-normalised "
                                 f"omicsclip embeddings")
            t0 = time.perf_counter()
            built[m] = build_index(x, params, use_gpu=use_gpu, seed=seed, desc=f"index {m}")
            if mk >= 1:  # searches the index just built (with its own approximation), before it is spilled
                nulls[m] = leave_one_out(built[m], x, calibration_sample(n, section["mapping_cells"], seed), mk)
            del x, norms
            timings[m] = round(time.perf_counter() - t0, 3)
            log.info("built %s index (%s) over %d cells in %.1fs", m, factory_string(params), n, timings[m])
            if spill is not None:  # written now and dropped: the next modality's index does not sit beside it
                import faiss

                faiss.write_index(built[m], str(spill / f"{m}.faiss"))
                built[m] = spill / f"{m}.faiss"
        calib = MappingCalibration(mk, nulls, seed) if nulls else None
        lab, label_keys = None, []
        if labels is not None and labels.shape[1] > 0:
            lab = labels.reset_index(drop=True).astype(str)
            lab.columns = [str(c) for c in lab.columns]
            label_keys = list(lab.columns)
        meta = {
            "format_version": FORMAT_VERSION,
            "metric": METRIC,
            "dim": int(dim),
            "n": n,
            "kind": params.kind,
            "factory": factory_string(params),
            "params": params.to_dict(),
            "modalities": mods,
            "model_fingerprint": str(model_fingerprint),
            "proteins": None if protein is None else [str(p) for p in protein_names],
            "protein_normalisation": None if protein is None else "clr",
            "label_keys": label_keys,
            "build_seconds": timings,
            "omicsclip_version": _version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": dict(source or {}),
            "mapping": None if calib is None else calib.to_meta(mods, MAPPING),
        }
        if gpu_enabled(search_gpu) and spill is None:  # as load does: search on a GPU copy, with the same search parameters
            built = {m: to_gpu(index) for m, index in built.items()}
            for index in built.values():
                set_search_params(index, params)
        return cls(Path(name), meta, built, np.asarray(ids, dtype=object), protein, lab, backing=None,
                   mapping=calib)

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write the reference as an index folder (atomically; what :meth:`load` reads) and name it by it.

        Parameters
        ----------
        out_dir
            The index folder to create; never one holding the folder this reference was loaded from.
        overwrite
            Replace an existing folder.

        Returns
        -------
        Path
            ``out_dir``.
        """
        import faiss

        out_dir = Path(out_dir)
        with atomic_path(out_dir, overwrite=overwrite, inputs=(self._backing,)) as tmp:
            tmp.mkdir()
            for m, index in self.indices.items():
                if isinstance(index, Path):  # spilled by build(spill=...)
                    shutil.move(index, tmp / f"{m}.faiss")
                    continue
                on_gpu = isinstance(index, getattr(faiss, "GpuIndex", ())) or type(index).__name__.startswith("Gpu")
                faiss.write_index(faiss.index_gpu_to_cpu(index) if on_gpu else index, str(tmp / f"{m}.faiss"))
            ids = pd.DataFrame({"cell_id": [str(c) for c in self.cell_ids]})
            to_tsv(ids, tmp / IDS)  # escaped: one id per line, whatever it holds
            if self.protein is not None:
                np.save(tmp / PROTEIN, np.ascontiguousarray(self.protein, dtype=np.float32))
            if self.labels is not None:
                self.labels.to_parquet(tmp / OBS, index=False)
            if self.mapping is not None:
                np.save(tmp / MAPPING, self.mapping.to_array(self.meta["mapping"]["modalities"]))
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            meta = {**{k: v for k, v in self.meta.items() if k != "files"}, "files": files}
            write_json(tmp / META, meta)
        self.path, self.meta = out_dir, meta
        log.info("wrote index folder %s (%s, n=%d, dim=%d)", out_dir, self.params.kind, self.n, self.dim)
        return out_dir

    @classmethod
    def load(cls, path: str | Path, *, model_fingerprint: str | None = None, use_gpu: bool | str = "auto",
             verify: bool = True, model_name: str = "the given model") -> ReferenceIndex:
        """Open ``path``; refuse an index built by another model, a missing or corrupt file.

        Parameters
        ----------
        path
            The index folder.
        model_fingerprint
            The query model's fingerprint; must equal the one the index was built with (``None`` skips the check).
        use_gpu
            ``auto`` | ``True`` | ``False``: move flat/IVF indices to a GPU for searching.
        verify
            Check every file's sha256 against ``meta.json`` (catches truncated or swapped files).
        model_name
            How to name the model in the refusal message (e.g. its folder).
        """
        import faiss

        path = Path(path)
        meta = read_meta(path)
        if model_fingerprint is not None and str(model_fingerprint) != meta["model_fingerprint"]:
            raise InputError(
                f"{path}: index was built with model {meta['model_fingerprint'][:16]}, but {model_name} is "
                f"{str(model_fingerprint)[:16]}; rebuild the index with this model (omicsclip embed + index)"
            )
        files = meta["files"]
        for name in files:
            f = path / name
            if not f.exists():
                raise InputError(f"{f}: missing from the index folder")
            if verify and sha256_file(f) != files[name]:
                raise InputError(f"{f}: corrupt index file (sha256 differs from meta.json); rebuild the index")
        gpu = gpu_enabled(use_gpu)
        params = IndexParams.from_dict(meta["params"])
        indices: dict[str, Any] = {}
        for m in meta["modalities"]:
            f = path / f"{m}.faiss"
            try:
                index = faiss.read_index(str(f))
            except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError with a C++ message
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise InputError(f"{f}: corrupt index file ({one_line(first)})") from None
            if index.d != meta["dim"] or index.ntotal != meta["n"]:
                raise InputError(f"{f}: index has {index.ntotal} x {index.d}, meta.json says "
                                 f"{meta['n']} x {meta['dim']}; rebuild the index")
            if kind_of(faiss, index) != params.kind:
                raise InputError(f"{path / META}: kind {params.kind!r} does not match {f.name} (a "
                                 f"{kind_of(faiss, index)} index); rebuild the index")
            if gpu:
                index = to_gpu(index)
            set_search_params(index, params)
            indices[m] = index
        ids = read_ids(path / IDS, meta["n"])
        protein = None
        if (path / PROTEIN).exists():
            try:
                protein = np.load(path / PROTEIN, mmap_mode="r")
            except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/OSError/EOFError for bad headers
                raise InputError(f"{path / PROTEIN}: unreadable ({one_line(exc, 100)})") from None
            if protein.shape != (meta["n"], len(meta["proteins"] or [])) or protein.dtype != np.float32:
                raise InputError(f"{path / PROTEIN}: shape {protein.shape} ({protein.dtype}) disagrees with "
                                 f"meta.json ({meta['n']} x {len(meta['proteins'] or [])} float32)")
        elif meta["proteins"] is not None:
            raise InputError(f"{path / META}: proteins are listed but {PROTEIN} is missing")
        labels = None
        if (path / OBS).exists():
            try:
                labels = pd.read_parquet(path / OBS)
            except Exception as exc:  # noqa: BLE001 - pyarrow's own error types
                raise InputError(f"{path / OBS}: unreadable ({one_line(exc, 100)})") from None
            if len(labels) != meta["n"]:
                raise InputError(f"{path / OBS}: {len(labels)} rows, meta.json says {meta['n']}")
        if [str(c) for c in (labels.columns if labels is not None else [])] != meta["label_keys"]:
            raise InputError(f"{path / META}: label_keys {show(meta['label_keys'])} disagree with "
                             f"{OBS if labels is not None else 'the missing ' + OBS}")
        return cls(path, meta, indices, ids, protein, labels, backing=path,
                   mapping=MappingCalibration.read(path / MAPPING, meta.get("mapping")))

    def search(self, modality: str, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarity, position) of query embeddings ``q`` in the ``modality`` index."""
        if modality not in self.indices:
            raise InputError(f"{self.path}: no {modality} index (has {', '.join(self.indices)})")
        return search(self.indices[modality], q, k)
