"""The paired store: MuData-compatible zarr (``mod/rna``, ``mod/prot``), raw counts CSR chunked by cells.

Written cell-chunk by cell-chunk (bounded memory) into a temporary path and renamed when complete.
``mudata.read_zarr`` opens the result; :func:`read_store` loads it into :class:`PairedData`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.errors import InputError
from omicsclip.io.atomic import atomic_path
from omicsclip.io.jsonfile import dumps_json
from omicsclip.io.paired import PairedData

log = logging.getLogger(__name__)

RNA, PROT = "rna", "prot"
_ZCHUNK = 1 << 20  # elements per zarr chunk of the CSR data/indices arrays


def _zarr_group(path: Path, mode: str):
    import zarr

    if mode == "w":
        return zarr.open_group(str(path), mode="w", zarr_format=2)
    return zarr.open_group(str(path), mode=mode)


def _clean_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Make a frame zarr-writable: string index, object columns as str or categorical."""
    df = df.copy()
    df.index = df.index.astype(str)
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].astype(str)
    return df


class StoreWriter:
    """Append cell chunks to a new paired store, then :meth:`close` renames it into place.

    Use as a context manager: an exception inside the block (also ``KeyboardInterrupt`` or the CLI's SIGTERM)
    removes the partial store. From construction to :meth:`close` the writer holds the output's lock
    (:func:`omicsclip.io.atomic.atomic_path`), so a second writer of the same store is refused. ``inputs``: the
    paths the writer's data come from; an output that is or holds one of them is refused, even with ``overwrite``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        genes: pd.DataFrame,
        proteins: pd.DataFrame,
        overwrite: bool = False,
        inputs: Iterable[str | Path | None] = (),
    ) -> None:
        self.path = Path(path)
        self.genes = _clean_frame(genes)
        self.proteins = _clean_frame(proteins)
        self._stack = ExitStack()
        # holds the output's lock until close(); the temporary store is removed on any error, also here
        self._tmp = self._stack.enter_context(atomic_path(self.path, overwrite=overwrite, inputs=inputs))
        try:
            self._root = _zarr_group(self._tmp, "w")
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._obs: list[pd.DataFrame] = []
        self._started = False
        self._closed = False

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stack.__exit__(exc_type, exc, tb)
        elif not self._closed:
            self._stack.__exit__(RuntimeError, RuntimeError("store not closed"), None)

    def append(self, rna: sp.spmatrix, prot: np.ndarray | sp.spmatrix, obs: pd.DataFrame) -> None:
        """Add a chunk of cells (rows of ``rna``/``prot`` align with ``obs``)."""
        from anndata.io import sparse_dataset, write_elem

        rna = sp.csr_matrix(rna, dtype=np.float32)
        prot = sp.csr_matrix(prot, dtype=np.float32)
        if rna.shape[0] != prot.shape[0] or rna.shape[0] != len(obs):
            raise ValueError("chunk shapes disagree")
        if rna.shape[1] != len(self.genes) or prot.shape[1] != len(self.proteins):
            raise ValueError("chunk feature count disagrees with the store's features")
        for mod, mat in ((RNA, rna), (PROT, prot)):
            if not self._started:
                g = self._root.require_group(f"mod/{mod}")
                write_elem(g, "X", mat, dataset_kwargs={"chunks": (_ZCHUNK,)})
            else:
                sparse_dataset(self._root[f"mod/{mod}/X"]).append(mat)
        self._started = True
        self._obs.append(obs)

    def close(self, uns: dict[str, Any] | None = None, *, genes: pd.DataFrame | None = None,
              proteins: pd.DataFrame | None = None) -> Path:
        """Write obs/var/maps/uns, then rename the temporary store to its final path.

        ``genes``/``proteins`` replace the feature metadata given at construction (same names and order),
        e.g. to add per-feature QC columns computed while appending.
        """
        from anndata.io import write_elem

        for new, old in ((genes, self.genes), (proteins, self.proteins)):
            if new is not None and not new.index.astype(str).equals(old.index):
                raise ValueError("replacement feature metadata must keep the same names and order")
        self.genes = self.genes if genes is None else _clean_frame(genes)
        self.proteins = self.proteins if proteins is None else _clean_frame(proteins)
        if not self._started:
            raise InputError(f"{self.path}: no cells to write (empty input after filtering)")
        obs = _clean_frame(pd.concat(self._obs)) if len(self._obs) > 1 else _clean_frame(self._obs[0])
        n = len(obs)
        # The small metadata elements are written into memory and dumped as files in one go: through zarr's
        # local store every one of the hundreds of tiny arrays costs a few thread hand-offs (seconds in total).
        mem: dict[str, Any] = {}
        root = _memory_group(mem)
        for mod in (RNA, PROT):
            root.require_group(f"mod/{mod}")
        empty_idx = pd.DataFrame(index=obs.index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for mod, var in ((RNA, self.genes), (PROT, self.proteins)):
                g = root[f"mod/{mod}"]
                g.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
                write_elem(g, "obs", empty_idx)
                write_elem(g, "var", var)
                for k in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
                    write_elem(g, k, {})
            root["mod"].attrs["mod-order"] = [RNA, PROT]
            write_elem(root, "obs", obs)
            allvar = pd.concat(
                [pd.DataFrame(index=self.genes.index), pd.DataFrame(index=self.proteins.index)]
            )
            allvar["modality"] = pd.Categorical([RNA] * len(self.genes) + [PROT] * len(self.proteins))
            write_elem(root, "var", allvar)
            g_, p_ = len(self.genes), len(self.proteins)
            write_elem(root, "obsm", {RNA: np.ones((n, 1), bool), PROT: np.ones((n, 1), bool)})
            write_elem(root, "obsmap", {RNA: np.arange(1, n + 1, dtype=np.uint32),
                                        PROT: np.arange(1, n + 1, dtype=np.uint32)})
            rna_var = np.zeros(g_ + p_, np.uint32)
            rna_var[:g_] = np.arange(1, g_ + 1)
            prot_var = np.zeros(g_ + p_, np.uint32)
            prot_var[g_:] = np.arange(1, p_ + 1)
            write_elem(root, "varm", {RNA: rna_var[:, None] > 0, PROT: prot_var[:, None] > 0})
            write_elem(root, "varmap", {RNA: rna_var, PROT: prot_var})
            write_elem(root, "obsp", {})
            write_elem(root, "varp", {})
            write_elem(root, "uns", _jsonable_uns(uns or {}))
        root.attrs.update({"axis": 0, "encoding-type": "MuData", "encoding-version": "0.1.0",
                           "encoder": "omicsclip", "encoder-version": _version()})
        _dump(mem, self._tmp)
        self._closed = True
        self._stack.close()  # renames tmp -> path
        log.info("wrote %s: %d cells, %d genes, %d proteins", self.path, n, g_, p_)
        return self.path


def _memory_group(mem: dict[str, Any]):
    import zarr
    from zarr.storage import MemoryStore

    return zarr.open_group(MemoryStore(mem), mode="w", zarr_format=2)


def _dump(mem: dict[str, Any], folder: Path) -> None:
    """Write the keys of an in-memory zarr v2 store as files under ``folder`` (same on-disk layout)."""
    for key, buf in mem.items():
        target = folder.joinpath(*key.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buf.to_bytes())


def _version() -> str:
    from omicsclip import __version__

    return __version__


def _jsonable_uns(uns: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts of scalars/strings/arrays are written natively; lists of dicts become JSON strings."""
    out: dict[str, Any] = {}
    for k, v in uns.items():
        if isinstance(v, dict):
            out[k] = _jsonable_uns(v)
        elif isinstance(v, list | tuple) and any(isinstance(x, dict | list | tuple) for x in v):
            out[k + "_json"] = dumps_json(v, compact=True)
        elif v is None:
            out[k] = "null"
        else:
            out[k] = v
    return out


def write_store(data: PairedData, path: str | Path, *, overwrite: bool = False,
                chunk_cells: int = 10_000) -> Path:
    """Write in-memory paired data to a new store (chunked by cells)."""
    with StoreWriter(path, genes=data.genes, proteins=data.proteins, overwrite=overwrite) as w:
        for start in range(0, max(data.n_cells, 1), chunk_cells):
            sl = slice(start, start + chunk_cells)
            if start < data.n_cells:
                w.append(data.rna[sl], data.prot[sl], data.obs.iloc[sl])
        return w.close(uns=data.uns)


def _open(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: store not found")
    try:
        root = _zarr_group(path, "r")
        if root.attrs.get("encoding-type") != "MuData" or "mod" not in root:
            raise InputError(f"{path}: not an omicsclip paired store (no MuData layout)")
        for mod in (RNA, PROT):
            if f"mod/{mod}/X" not in root:
                raise InputError(f"{path}: store has no modality '{mod}'")
    except InputError:
        raise
    except Exception as exc:  # corrupt metadata, not a zarr folder
        raise InputError(f"{path}: cannot open store ({type(exc).__name__}: {exc})") from None
    return root


def store_info(path: str | Path) -> dict[str, Any]:
    """Shapes, feature names, obs and uns of a store without loading the count matrices."""
    from anndata.io import read_elem

    root = _open(path)
    with _corrupt_store(path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs = read_elem(root["obs"])
        genes = read_elem(root["mod/rna/var"])
        proteins = read_elem(root["mod/prot/var"])
        uns = read_elem(root["uns"]) if "uns" in root else {}
        return {"obs": obs, "genes": genes, "proteins": proteins, "uns": uns,
                "nnz_rna": int(root["mod/rna/X/data"].shape[0]), "nnz_prot": int(root["mod/prot/X/data"].shape[0])}


def is_pooled_store(path: str | Path) -> bool:
    """Whether ``path`` is a paired store pooled from several datasets (``omicsclip pool``); reads no obs."""
    from omicsclip.io.panels import GENE_PANELS_KEY, PANELS_KEY

    root = _open(path)
    return f"uns/{PANELS_KEY}" in root or f"uns/{GENE_PANELS_KEY}" in root


@contextmanager
def _corrupt_store(path: str | Path) -> Iterator[None]:
    """Any failure reading a store that opened (missing or damaged elements) -> one-line :class:`InputError`."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: corrupt store ({type(exc).__name__}: {exc})") from None


def iter_store(path: str | Path, chunk_cells: int = 10_000) -> Iterator[tuple[sp.csr_matrix, np.ndarray, slice]]:
    """Yield (rna CSR, protein dense, cell slice) chunks without loading the whole store.

    The counts are read by row ranges through :class:`~omicsclip.io.anndata_input.MatrixTable`, the table
    behind in-memory, backed and lazy AnnData inputs. In a store pooled from several antibody panels, proteins
    outside a cell's panel are NaN (:mod:`omicsclip.io.panels`).
    """
    from anndata.io import sparse_dataset

    from omicsclip.io.anndata_input import MatrixTable
    from omicsclip.io.panels import store_present

    root = _open(path)
    # only a pooled store has panels: the whole obs (millions of rows in an atlas) is read just for one
    present = store_present(store_info(path)) if "uns" in root and "panels" in root["uns"] else None
    with _corrupt_store(path):
        rna = MatrixTable(sparse_dataset(root["mod/rna/X"]), path=path, what="mod/rna/X")
        prot = MatrixTable(sparse_dataset(root["mod/prot/X"]), path=path, what="mod/prot/X")
    n = rna.n_rows
    if prot.n_rows != n:
        raise InputError(f"{path}: corrupt store (mod/rna/X has {n} cells, mod/prot/X {prot.n_rows})")
    for start in range(0, n, chunk_cells):
        sl = slice(start, min(start + chunk_cells, n))
        with _corrupt_store(path):
            chunk = rna.read_range(sl.start, sl.stop), prot.read_range(sl.start, sl.stop).toarray(), sl
        if present is not None:
            chunk[1][~present[sl]] = np.nan
        yield chunk


def read_store(path: str | Path) -> PairedData:
    """Load a whole store into memory."""
    from anndata.io import read_elem

    root = _open(path)
    info = store_info(path)
    with _corrupt_store(path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rna = sp.csr_matrix(read_elem(root["mod/rna/X"]), dtype=np.float32)
        prot = np.asarray(sp.csr_matrix(read_elem(root["mod/prot/X"])).toarray(), dtype=np.float32)
    from omicsclip.io.panels import store_present

    present = store_present(info)
    if present is not None:  # proteins outside a cell's panel (a pooled store)
        prot[~present] = np.nan
    return PairedData(rna=rna, prot=prot, obs=info["obs"], genes=info["genes"],
                      proteins=info["proteins"], uns=info["uns"])
