"""Open what a notebook holds (MuData, AnnData, a pair of AnnData) as the :class:`InputSource` files give.

In memory, backed (``backed="r"``) or lazy (dask arrays from ``anndata.experimental.read_lazy`` /
``read_elem_lazy``) objects are all read the same way: a :class:`MatrixTable` over the array reads cell rows
``lo:hi`` only, so pairing by barcode, validation and chunked iteration are the file readers' own code::

    adata = anndata.experimental.read_lazy("big.h5ad")      # X is a dask array, nothing loaded
    with open_anndata(adata) as src:
        for chunk in src.iter_chunks(natural_chunk_rows(src) or 10_000):   # PairedData, bounded memory
            ...

A dask array is computed one row block at a time (its own row chunks; one block is kept for the next read),
never whole; sparse matrices and sparse dask blocks stay sparse.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.conventions import MODALITIES
from omicsclip.errors import InputError
from omicsclip.io.h5ad import (
    HTO_OBSM_KEYS,
    PROTEIN_OBSM_KEYS,
    keep_one_modality,
    split_feature_types,
)
from omicsclip.io.raw import RawInput
from omicsclip.io.readers import REQUIRE, InputSource, open_input
from omicsclip.io.tables import CountTable, CsrArraysTable, View

log = logging.getLogger(__name__)

#: keyword options of :func:`open_anndata` passed on to :class:`InputSource` (the rest are read here)
SOURCE_KEYS = ("isotype_patterns", "keep_isotypes", "hto_patterns", "pairing", "allow_normalized", "make_unique",
               "harmonise_proteins", "protein_aliases")
_IGNORED_KEYS = ("genes_in_rows",)  # file-only reader options (accepted so a config section passes through)


def _is_dask(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "chunks") and hasattr(x, "compute")


def _is_zarr(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "zarr" and hasattr(x, "chunks")


def _is_lazy_frame(x: Any) -> bool:
    """Tell anndata's ``Dataset2D`` (lazy obs/var/obsm frames of ``read_lazy``, on xarray) apart."""
    return hasattr(x, "to_memory") and hasattr(x, "columns") and hasattr(x, "ds")


def _columns(frame: Any) -> list[Any]:
    """Column names in order (a lazy frame's ``columns`` is an unordered set; its dataset keeps the order)."""
    return list(frame.ds.data_vars) if _is_lazy_frame(frame) else list(frame.columns)


def _sparse_dataset_kind(x: Any) -> str | None:
    """``"csr"``/``"csc"`` for an anndata backed sparse dataset (``backed="r"`` ``X``, ``sparse_dataset``)."""
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # pragma: no cover - anndata < 0.11
        return None
    return "csr" if isinstance(x, CSRDataset) else "csc" if isinstance(x, CSCDataset) else None


def natural_chunk_rows(x: Any) -> int | None:
    """Rows per block that ``x`` is stored or computed in, or ``None`` when it has no row chunking.

    Parameters
    ----------
    x
        A dask array (its largest row chunk), a zarr array (its chunk's rows), a :class:`MatrixTable`, or an
        :class:`InputSource` from :func:`open_anndata` (the row chunking of its first table).

    Returns
    -------
    int or None
        ``None`` for in-memory, HDF5 and backed sparse matrices (any chunk size reads them equally well).
    """
    if isinstance(x, InputSource):
        return x.info.get("natural_chunk_rows")
    if isinstance(x, MatrixTable):
        return x.chunk_rows
    if _is_dask(x):
        return int(max(x.chunks[0])) if len(x.chunks[0]) else None
    if _is_zarr(x) and x.chunks:
        return int(x.chunks[0])
    return None


def _to_csr(block: Any) -> sp.csr_matrix:
    """Convert a computed block (numpy, scipy sparse, pydata ``sparse``) as CSR float32, sparse input kept sparse."""
    if sp.issparse(block):
        return sp.csr_matrix(block, dtype=np.float32)
    if hasattr(block, "tocsr"):  # pydata sparse.COO / GCXS
        return sp.csr_matrix(block.tocsr(), dtype=np.float32)
    return sp.csr_matrix(np.asarray(block, dtype=np.float32))


def _integer_dtype(dtype: Any) -> bool:
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.integer))
    except TypeError:
        return False


class MatrixTable(CountTable):
    """A cells x features array-like read by row ranges: the table behind in-memory, backed and lazy inputs.

    Parameters
    ----------
    x
        numpy array, scipy sparse matrix (CSC/COO are converted to CSR once), anndata backed sparse dataset,
        h5py or zarr dataset, dask array (dense or sparse blocks), or a data frame (pandas, or anndata's lazy
        ``Dataset2D``; numeric columns).
    path
        Where it comes from, for messages (a file, or a label such as ``"AnnData"``).
    what
        The matrix's name in messages, e.g. ``"X"`` or ``"obsm['protein']"``.
    barcodes, features
        Row names and column metadata (index = feature names); default: positions.

    Attributes
    ----------
    chunk_rows
        The array's natural rows per block (:func:`natural_chunk_rows`), or ``None``.
    """

    def __init__(self, x: Any, *, path: str | Path = "array", what: str = "X", barcodes: pd.Index | None = None,
                 features: pd.DataFrame | None = None) -> None:
        if isinstance(x, pd.DataFrame) or _is_lazy_frame(x):
            x = self._frame_array(x, path, what)
        if _is_dask(x) and any(np.isnan(c) for dim in x.chunks for c in dim):
            raise InputError(f"{path}: {what} is a dask array of unknown chunk sizes; call "
                             "x.compute_chunk_sizes() first")
        shape = tuple(int(s) for s in getattr(x, "shape", ()))
        if len(shape) != 2:
            raise InputError(f"{path}: {what} is not a 2-d matrix (type {type(x).__name__}, shape {shape})")
        barcodes = pd.RangeIndex(shape[0]) if barcodes is None else barcodes
        features = pd.DataFrame(index=pd.RangeIndex(shape[1])) if features is None else features
        super().__init__(Path(path), what, barcodes, features)
        if shape != (self.n_rows, self.n_cols):
            raise InputError(f"{path}: {what} has shape {shape} but {self.n_rows} cells x {self.n_cols} features "
                             "(shape mismatch)")
        self._inner: CountTable | None = None
        self._bounds: np.ndarray | None = None
        self._cache: tuple[int, sp.csr_matrix] | None = None
        self.chunk_rows = natural_chunk_rows(x)
        self.integer = _integer_dtype(getattr(x, "dtype", None))
        kind = _sparse_dataset_kind(x)
        if kind == "csr" and {"data", "indices", "indptr"} <= set(getattr(x, "group", {}).keys()):
            g = x.group  # the file reader's CSR path: data/indices read between indptr[lo] and indptr[hi]
            self._inner = CsrArraysTable(self.path, what, self.barcodes, self.features, data=g["data"],
                                         indices=g["indices"], indptr=g["indptr"])
            self.integer = self._inner.integer
        elif kind == "csc":
            log.warning("%s: %s is stored as CSC: every row block reads the whole matrix (re-save as CSR to "
                        "stream it quickly)", path, what)
        elif sp.issparse(x) and x.format != "csr":
            log.info("%s: %s is a %s matrix; converting it to CSR once to read it by rows", path, what,
                     x.format.upper())
            x = sp.csr_matrix(x)
        elif _is_dask(x):
            self._bounds = np.cumsum([0, *x.chunks[0]])
        self._x = x

    @staticmethod
    def _frame_array(frame: Any, path: str | Path, what: str) -> Any:
        """Return a data frame's numeric columns as one 2-d array (dask-stacked when the frame is lazy)."""
        cols = _columns(frame)
        lazy = _is_lazy_frame(frame)
        arrays = [frame[c].data if lazy else frame[c] for c in cols]
        bad = [c for c, a in zip(cols, arrays, strict=True) if not pd.api.types.is_numeric_dtype(a.dtype)
               or pd.api.types.is_bool_dtype(a.dtype)]
        if bad:
            raise InputError(f"{path}: {what} has non-numeric columns {[str(c) for c in bad[:3]]}")
        if not lazy or not cols:
            return frame.to_numpy() if not lazy else np.zeros((int(frame.shape[0]), 0), dtype=np.float32)
        import dask.array as da

        return da.stack([a if _is_dask(a) else da.from_array(np.asarray(a)) for a in arrays], axis=1)

    def _read_range(self, lo: int, hi: int) -> sp.csr_matrix:
        if self._inner is not None:
            return self._inner._read_range(lo, hi)
        if self._bounds is not None:
            return self._read_dask(lo, hi)
        x = self._x
        if isinstance(x, np.ndarray) and x.dtype == np.float32:
            return sp.csr_matrix(x[lo:hi])
        return _to_csr(x[lo:hi])

    def _block(self, i: int) -> sp.csr_matrix:
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1]
        b0, b1 = int(self._bounds[i]), int(self._bounds[i + 1])
        block = _to_csr(self._x[b0:b1].compute(scheduler="synchronous"))
        self._cache = (i, block)
        return block

    def _read_dask(self, lo: int, hi: int) -> sp.csr_matrix:
        """Rows ``lo:hi`` from whole row blocks (each computed once when read in order), or one direct slice."""
        bounds = self._bounds
        i0 = int(np.searchsorted(bounds, lo, side="right")) - 1
        i1 = int(np.searchsorted(bounds, hi, side="left"))
        biggest = int(np.max(np.diff(bounds[i0:i1 + 1]))) if i1 > i0 else 0
        if hi <= lo or biggest > 4 * (hi - lo) + 1024:  # blocks much larger than the request: slice directly
            return _to_csr(self._x[lo:hi].compute(scheduler="synchronous"))
        parts = []
        for i in range(i0, i1):
            b0, b1 = int(bounds[i]), int(bounds[i + 1])
            block = self._block(i)
            a, b = max(lo, b0) - b0, min(hi, b1) - b0
            parts.append(block if (a, b) == (0, b1 - b0) else block[a:b])
        if self._cache is not None and hi >= bounds[self._cache[0] + 1]:
            self._cache = None  # read to its end: not needed again (and a block handed out whole is the caller's)
        return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")

    def close(self) -> None:
        """Drop the cached row block (the array itself belongs to the caller)."""
        self._cache = None


# ---- AnnData / MuData -> RawInput -------------------------------------------------------------------------------
def _names(index: Any) -> pd.Index:
    return pd.Index([str(i) for i in index], dtype=object)


def _frame(df: Any) -> pd.DataFrame:
    """obs/var as an in-memory frame with a string index (a lazy ``Dataset2D`` is loaded: metadata only)."""
    if _is_lazy_frame(df):
        df = df.to_memory()
    return pd.DataFrame(df).set_axis(_names(df.index), axis=0)


def _source_label(adata: Any, label: str) -> tuple[Path, list[Path]]:
    """(path for messages, files) of an AnnData: its file when backed, else ``label``."""
    name = getattr(adata, "filename", None) if getattr(adata, "isbacked", False) else None
    return (Path(name), [Path(name)]) if name else (Path(label), [])


def _uns_names(uns: Mapping[str, Any], key: str) -> list[str] | None:
    for cand in (f"{key}_names", "protein_names"):
        if cand in uns:
            return [str(x.decode() if isinstance(x, bytes) else x) for x in np.asarray(uns[cand]).ravel()]
    return None


def _obsm_table(adata: Any, key: str, path: Path, pre: str, barcodes: pd.Index, what: str) -> MatrixTable:
    """Open a table over ``obsm[key]``: a frame (names = columns) or an array with names in ``uns``."""
    arr = adata.obsm[key]
    label = f"{pre}obsm['{key}']"
    if isinstance(arr, pd.DataFrame) or _is_lazy_frame(arr):
        names = pd.DataFrame(index=_names(_columns(arr)))
        return MatrixTable(arr, path=path, what=label, barcodes=barcodes, features=names)
    names = _uns_names(adata.uns, key)
    n_cols = int(arr.shape[1]) if len(getattr(arr, "shape", ())) == 2 else -1
    if names is None:
        raise InputError(f"{path}: {label} is an array without {what} names; store them in "
                         f"uns['{key}_names'] or uns['protein_names']")
    if len(names) != n_cols:
        raise InputError(f"{path}: {label} has {n_cols} columns but uns lists {len(names)} names (shape mismatch)")
    return MatrixTable(arr, path=path, what=label, barcodes=barcodes, features=pd.DataFrame(index=pd.Index(names)))


def _find_key(adata: Any, candidates: tuple[str, ...], explicit: str | None) -> str | None:
    keys = [str(k) for k in adata.obsm.keys()]
    if explicit:
        return explicit if explicit in keys else None
    return next((k for k in candidates if k in keys), None)


def _anndata_raw(adata: Any, *, modality: str | None, protein_key: str | None, layer: str | None,
                 label: str = "AnnData", pre: str = "", fmt: str = "anndata", keep: str | None = None) -> RawInput:
    """Find the modalities of one AnnData as :func:`omicsclip.io.h5ad.read_anndata_group` does (``keep`` too)."""
    path, files = _source_label(adata, label)
    if layer:
        if layer not in adata.layers.keys():
            have = ", ".join(sorted(str(k) for k in adata.layers.keys())) or "none"
            raise InputError(f"{path}: no {pre}layers['{layer}'] (layers: {have}; choose one with layer=NAME)")
        x, mkey = adata.layers[layer], f"{pre}layers/{layer}"
    else:
        x, mkey = adata.X, f"{pre}X"
    if x is None:
        raise InputError(f"{path}: {pre}X is empty (None); pick the counts with layer=NAME")
    obs, var = _frame(adata.obs), _frame(adata.var)
    table = MatrixTable(x, path=path, what=mkey, barcodes=obs.index, features=var)
    raw = RawInput(fmt=fmt, files=files, obs=obs, obs_table=table)
    if keep is not None:  # the caller keeps only that modality of what is found
        if keep_one_modality(raw, table, var, mkey, keep, path=path, explicit=protein_key,
                             key=_find_key(adata, PROTEIN_OBSM_KEYS, protein_key),
                             open_table=lambda k: _obsm_table(adata, k, path, pre, obs.index, "protein")):
            return raw
        modality = keep
    if modality == "prot":
        raw.prot = View(table)
        return raw
    if modality is None and split_feature_types(raw, table, var, mkey):
        return raw
    raw.rna = View(table)
    if modality == "rna":
        return raw
    key = _find_key(adata, PROTEIN_OBSM_KEYS, protein_key)
    if key is not None:
        raw.prot = View(_obsm_table(adata, key, path, pre, obs.index, "protein"))
    else:
        have = [str(k) for k in adata.obsm.keys()]
        raw.missing["prot"] = (f"no protein counts in {pre}obsm (looked for "
                               f"{protein_key or ', '.join(PROTEIN_OBSM_KEYS[:4])}; obsm has {have or 'nothing'})")
    hkey = _find_key(adata, HTO_OBSM_KEYS, None)
    if hkey is not None:
        raw.hto = View(_obsm_table(adata, hkey, path, pre, obs.index, "hashtag"))
    return raw


def _mudata_raw(mdata: Any, *, rna_modality: str, prot_modality: str, protein_key: str | None,
                layer: str | None) -> RawInput:
    mods = [str(m) for m in mdata.mod.keys()]
    name = getattr(mdata, "filename", None) if getattr(mdata, "isbacked", False) else None
    raw = RawInput(fmt="mudata", files=[Path(name)] if name else [])
    for which, mod in (("rna", rna_modality), ("prot", prot_modality)):
        if mod not in mods:
            raw.missing[which] = f"no modality {mod!r} (has: {', '.join(mods)}); pass {which}_modality=NAME"
            continue
        part = _anndata_raw(mdata.mod[mod], modality=which, protein_key=protein_key, layer=layer,
                            label=str(name or "MuData"), pre=f"mod/{mod}/", fmt="mudata")
        setattr(raw, which, getattr(part, which))
        if raw.obs is None:
            raw.obs, raw.obs_table = part.obs, part.obs_table
    if raw.obs is not None and getattr(mdata, "obs", None) is not None:
        top = _frame(mdata.obs)
        cols = [c for c in top.columns if ":" not in str(c) and c not in raw.obs.columns]
        if cols and not top.index.has_duplicates and not raw.obs.index.has_duplicates:
            raw.obs = raw.obs.join(top[cols], how="left")
    return raw


def _pair_raw(rna_ad: Any, prot_ad: Any, *, layer: str | None) -> RawInput:
    rna = _anndata_raw(rna_ad, modality="rna", protein_key=None, layer=layer, label="RNA AnnData",
                       fmt="anndata-pair")
    prot = _anndata_raw(prot_ad, modality="prot", protein_key=None, layer=layer, label="protein AnnData",
                        fmt="anndata-pair")
    obs = rna.obs
    extra = [c for c in prot.obs.columns if c not in obs.columns]
    if extra and not obs.index.has_duplicates and not prot.obs.index.has_duplicates:
        obs = obs.join(prot.obs[extra], how="left")
    return RawInput(fmt="anndata-pair", files=rna.files + prot.files, rna=rna.rna, prot=prot.prot, obs=obs,
                    obs_table=rna.obs_table)


def _is_anndata(x: Any) -> bool:
    import anndata as ad

    return isinstance(x, ad.AnnData)


def _is_mudata(x: Any) -> bool:
    return hasattr(x, "mod") and hasattr(x, "obs") and not _is_anndata(x)


def _kind_name(x: Any) -> str:
    return type(x).__name__ if not isinstance(x, tuple | list) else f"{type(x).__name__} of {len(x)}"


def open_anndata(data: Any, *, protein_key: str | None = None, rna_modality: str = "rna",
                 prot_modality: str = "prot", require: str = "both", modality: str | None = None,
                 **reader_options: Any) -> InputSource:
    """Open a MuData, an AnnData or an ``(rna, protein)`` pair of AnnData as an :class:`InputSource`.

    The objects may be in memory, backed (``backed="r"``) or lazy (dask arrays, e.g. from
    ``anndata.experimental.read_lazy``): counts are read by row blocks as the chunks are iterated.

    Parameters
    ----------
    data
        ``mudata.MuData`` with RNA and protein modalities; ``anndata.AnnData`` with RNA in ``X`` and protein
        counts in ``obsm`` (a data frame whose columns are the proteins, or an array with names in
        ``uns[f"{protein_key}_names"]``/``uns["protein_names"]``), or with ``var['feature_types']`` marking
        "Antibody Capture" columns; a ``(rna_adata, prot_adata)`` tuple (counts in each ``X``); an AnnData
        holding one modality (``modality=``, ``require="any"``); or a path, handed to
        :func:`~omicsclip.io.readers.open_input`.
    protein_key
        ``obsm`` key of the protein counts (default: the first of ``protein``, ``protein_expression``, ...
        present, as for ``.h5ad`` files).
    rna_modality, prot_modality
        Modality names in a MuData.
    require
        ``both``: RNA and protein must be present; ``any``: one modality is enough (query/predict inputs).
    modality
        Keep one modality, ``"rna"`` or ``"prot"``: what a single AnnData's ``X`` holds, or of a paired one
        that part (its ``obsm`` protein, or the columns of an ``X`` split by 10x feature types).
    **reader_options
        ``layer`` (read ``layers[layer]`` instead of ``X``) and the options of :class:`InputSource`:
        ``isotype_patterns``, ``keep_isotypes``, ``hto_patterns``, ``pairing``, ``allow_normalized``,
        ``make_unique``, ``harmonise_proteins``, ``protein_aliases`` (``reader_options(config["ingest"])`` can be
        passed as is).

    Returns
    -------
    InputSource
        The file readers' class: ``iter_chunks(n)`` yields validated :class:`PairedData` chunks. Its
        ``info["natural_chunk_rows"]`` (also :func:`natural_chunk_rows`) is the data's own row chunking.
    """
    unknown = sorted(set(reader_options) - {*SOURCE_KEYS, *_IGNORED_KEYS, "layer"})
    if unknown:
        raise TypeError(f"open_anndata() got unexpected options: {', '.join(unknown)}")
    layer = reader_options.pop("layer", None) or None
    for key in _IGNORED_KEYS:
        reader_options.pop(key, None)
    if isinstance(data, str | Path):
        return open_input([data], rna_modality=rna_modality, prot_modality=prot_modality, require=require,
                          modality=modality, protein_key=protein_key, layer=layer, **reader_options)
    if require not in REQUIRE:
        raise InputError(f"require={require!r}: expected one of {', '.join(REQUIRE)}")
    if modality not in (None, *MODALITIES):
        raise InputError(f"modality={modality!r}: expected 'rna' or 'prot'")
    if _is_anndata(data):
        raw = _anndata_raw(data, modality=None, protein_key=protein_key, layer=layer, keep=modality)
    elif _is_mudata(data):
        raw = _mudata_raw(data, rna_modality=rna_modality, prot_modality=prot_modality,
                          protein_key=protein_key, layer=layer)
    elif isinstance(data, tuple | list) and len(data) == 2 and all(_is_anndata(d) for d in data):
        raw = _pair_raw(data[0], data[1], layer=layer)
    else:
        raise InputError(f"cannot read a {_kind_name(data)}: expected a MuData, an AnnData or a "
                         "(rna, protein) pair of AnnData")
    where = next((v.table.path for v in (raw.rna, raw.prot) if v is not None), Path(type(data).__name__))
    try:
        if modality is not None:
            setattr(raw, "prot" if modality == "rna" else "rna", None)
        missing = [m for m in MODALITIES if getattr(raw, m) is None]
        if require == "both" and missing:
            why = raw.missing.get(missing[0], f"no {'RNA' if missing[0] == 'rna' else 'protein'} counts")
            raise InputError(f"{where}: {why}; both RNA and protein are needed")
        if len(missing) == 2:
            raise InputError(f"{where}: neither RNA nor protein counts found")
        src = InputSource(raw, **reader_options)
    except BaseException:
        raw.close()
        raise
    primary = (raw.rna or raw.prot).table
    src.info["natural_chunk_rows"] = natural_chunk_rows(primary) if isinstance(primary, MatrixTable) else None
    log.debug("opened %s", src)
    return src
