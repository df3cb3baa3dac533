"""Cell Ranger feature-barcode matrices: the ``.h5`` file and the ``filtered_feature_bc_matrix/`` folder.

Cell Ranger stores features x barcodes in CSC, i.e. cells x features in CSR: the ``.h5`` is read by barcode
ranges directly. The Matrix Market folder is streamed once into temporary memory-mapped CSR arrays (sorted by
barcode with a counting sort when needed), so memory stays bounded by the chunk size, not the matrix.
"""

from __future__ import annotations

import csv
import gzip
import logging
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from omicsclip.errors import InputError
from omicsclip.io.features import name_list
from omicsclip.io.formats import READ_ERRORS, find_member, is_gzip, mtx_file, one_line, require_hdf5
from omicsclip.io.raw import RawInput
from omicsclip.io.tables import CsrArraysTable, View

log = logging.getLogger(__name__)

GEX, ADT, MULTIPLEX = "Gene Expression", "Antibody Capture", "Multiplexing Capture"
_ALIASES = {"GEX": GEX, "ADT": ADT}  # feature-type spellings of e.g. the NeurIPS 2021 benchmark files
_MTX_CHUNK = 4_000_000  # entries per parsed block


def _strings(arr: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(arr).ravel()]


def split_feature_types(table: CsrArraysTable, raw: RawInput) -> RawInput:
    """Gene Expression -> RNA, Antibody Capture -> protein, Multiplexing Capture -> hashtags; note the rest."""
    types = table.features["feature_type"].astype(str).replace(_ALIASES).to_numpy()
    for which, kind in (("rna", GEX), ("prot", ADT), ("hto", MULTIPLEX)):
        cols = np.flatnonzero(types == kind)
        if len(cols):
            setattr(raw, which, View(table, cols))
        elif which != "hto":
            raw.missing[which] = f"no '{kind}' features (feature types: {name_list(sorted(set(types)))})"
    other = sorted(set(types) - {GEX, ADT, MULTIPLEX})
    if other:
        raw.notes.append(f"ignored feature types: {', '.join(other)}")
        log.info("%s: ignoring feature types %s", table.path, ", ".join(other))
    return raw


def open_10x_h5(path: Path) -> RawInput:
    """Open a Cell Ranger ``.h5`` (v3+: ``matrix/`` with ``features/``; v2: one genome group, RNA only)."""
    import h5py

    require_hdf5(path, "10x-h5")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as HDF5 (truncated or corrupt file: {one_line(exc)})") from None
    try:
        raw = _read_10x_h5(path, f)
    except InputError:
        f.close()
        raise
    except READ_ERRORS as exc:
        f.close()
        raise InputError(f"{path}: cannot read the 10x matrix (truncated or corrupt file: {one_line(exc)})") from None
    raw.closers.append(f.close)
    return raw


def _read_10x_h5(path: Path, f) -> RawInput:
    if "matrix" in f:
        g = f["matrix"]
        need = {"data", "indices", "indptr", "shape", "barcodes", "features"}
        if not need <= set(g.keys()):
            raise InputError(f"{path}: matrix/ lacks {sorted(need - set(g.keys()))} (not a Cell Ranger .h5)")
        feats = g["features"]
        names = _strings(feats["name"][:])
        features = pd.DataFrame({
            "gene_ids": _strings(feats["id"][:]) if "id" in feats else names,
            "feature_type": _strings(feats["feature_type"][:]) if "feature_type" in feats else [GEX] * len(names),
            "genome": _strings(feats["genome"][:]) if "genome" in feats else [""] * len(names),
        }, index=pd.Index(names))
    else:
        groups = [k for k in f.keys() if hasattr(f[k], "keys") and "gene_names" in f[k]]
        if not groups:
            raise InputError(f"{path}: no matrix/ group (not a Cell Ranger feature-barcode .h5)")
        g = f[groups[0]]
        names = _strings(g["gene_names"][:])
        features = pd.DataFrame({"gene_ids": _strings(g["genes"][:]), "feature_type": GEX, "genome": groups[0]},
                                index=pd.Index(names))
    barcodes = pd.Index(_strings(g["barcodes"][:]))
    shape = tuple(int(s) for s in g["shape"][:])
    if shape != (len(features), len(barcodes)):
        raise InputError(f"{path}: matrix shape {shape} does not match {len(features)} features x "
                         f"{len(barcodes)} barcodes (shape mismatch)")
    table = CsrArraysTable(path, "matrix", barcodes, features, data=g["data"], indices=g["indices"],
                           indptr=g["indptr"])
    return split_feature_types(table, RawInput(fmt="10x-h5", files=[path]))


# ---- Matrix Market folder ----------------------------------------------------------------------------------
def _find(folder: Path, *names: str) -> Path:
    hit = find_member(folder, *names)
    if hit is None:
        raise InputError(f"{folder}: missing {names[0]}.gz (a Cell Ranger matrix folder has matrix.mtx.gz, "
                         "features.tsv.gz, barcodes.tsv.gz)")
    return hit


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        # Cell Ranger never quotes: a '"' is part of a name
        return pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE,
                           encoding="utf-8", compression="gzip" if is_gzip(path) else None)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file") from None
    except READ_ERRORS as exc:
        raise InputError(f"{path}: cannot read (truncated or corrupt file: {one_line(exc)})") from None


def _mtx_header(path: Path) -> tuple[tuple[int, int, int], int, str]:
    """((rows, cols, nnz), number of header lines, field) of a coordinate Matrix Market file."""
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            first = fh.readline()
            if not first.startswith("%%MatrixMarket"):
                raise InputError(f"{path}: not a Matrix Market file (first line {first[:40]!r})")
            parts = first.lower().split()
            if len(parts) < 5 or parts[2] != "coordinate" or parts[3] not in ("integer", "real", "double"):
                raise InputError(f"{path}: unsupported Matrix Market header {first.strip()!r} "
                                 "(expected 'matrix coordinate integer|real general')")
            n = 1
            line = fh.readline()
            while line.startswith("%"):
                n += 1
                line = fh.readline()
            size = tuple(int(x) for x in line.split())
    except InputError:
        raise
    except READ_ERRORS as exc:
        raise InputError(f"{path}: cannot read the Matrix Market header (truncated or corrupt: {one_line(exc)})") from None
    if len(size) != 3:
        raise InputError(f"{path}: bad Matrix Market size line {line.strip()!r}")
    return size, n + 1, parts[3]


def _mtx_to_csr(path: Path, size: tuple[int, int, int], skip: int, tmp: Path):
    """Stream entries into memory-mapped CSR arrays over barcodes; returns (data, indices, indptr)."""
    n_feat, n_cells, nnz = size
    data = np.lib.format.open_memmap(tmp / "data.npy", "w+", np.float32, (nnz,))
    feat = np.lib.format.open_memmap(tmp / "feat.npy", "w+", np.int32, (nnz,))
    cell = np.lib.format.open_memmap(tmp / "cell.npy", "w+", np.int32, (nnz,))
    counts = np.zeros(n_cells, np.int64)
    k, last, ordered = 0, -1, True
    try:
        reader = pd.read_csv(path, sep=r"\s+", header=None, skiprows=skip, chunksize=_MTX_CHUNK,
                             dtype={0: np.int64, 1: np.int64, 2: np.float64}, engine="c",
                             compression="gzip" if is_gzip(path) else None)
        for block in reader:
            if block.shape[1] != 3:
                raise InputError(f"{path}: entries must have 3 columns (row col value), got {block.shape[1]}")
            r, c, v = (block[i].to_numpy() for i in (0, 1, 2))
            if k + len(r) > nnz:
                raise InputError(f"{path}: more entries than the {nnz} declared in the header (corrupt file)")
            if len(r) and (r.min() < 1 or r.max() > n_feat or c.min() < 1 or c.max() > n_cells):
                raise InputError(f"{path}: entries outside the declared {n_feat} x {n_cells} matrix (corrupt file)")
            c0 = c - 1
            if ordered and len(c0) and (c0[0] < last or np.any(np.diff(c0) < 0)):
                ordered = False
            last = int(c0[-1]) if len(c0) else last
            data[k:k + len(r)] = v
            feat[k:k + len(r)] = r - 1
            cell[k:k + len(r)] = c0
            counts += np.bincount(c0, minlength=n_cells)
            k += len(r)
    except InputError:
        raise
    except READ_ERRORS as exc:
        raise InputError(f"{path}: cannot read entries (truncated or corrupt file: {one_line(exc)})") from None
    if k != nnz:
        raise InputError(f"{path}: {k} entries but the header declares {nnz} (truncated file)")
    indptr = np.concatenate([[0], np.cumsum(counts)])
    if ordered:
        return data, feat, indptr
    # counting sort by barcode, block by block (bounded memory)
    data2 = np.lib.format.open_memmap(tmp / "data2.npy", "w+", np.float32, (nnz,))
    feat2 = np.lib.format.open_memmap(tmp / "feat2.npy", "w+", np.int32, (nnz,))
    nxt = indptr[:-1].copy()
    for a in range(0, nnz, _MTX_CHUNK):
        cs = np.asarray(cell[a:a + _MTX_CHUNK])
        order = np.argsort(cs, kind="stable")
        sc = cs[order]
        rank = np.arange(len(sc)) - np.searchsorted(sc, sc, side="left")
        dest = nxt[sc] + rank
        data2[dest] = np.asarray(data[a:a + _MTX_CHUNK])[order]
        feat2[dest] = np.asarray(feat[a:a + _MTX_CHUNK])[order]
        nxt += np.bincount(sc, minlength=n_cells)
    return data2, feat2, indptr


def open_10x_mtx_pair(rna_path: Path, prot_path: Path) -> RawInput:
    """Two matrix folders (e.g. GEO's per-sample RNA and ADT triplets): RNA from the first, protein from the second.

    Features typed "Gene Expression" (first) / "Antibody Capture" (second) are used when the folders carry feature
    types, every feature otherwise.
    """
    rna = open_10x_mtx(rna_path)
    try:
        prot = open_10x_mtx(prot_path)
    except BaseException:
        rna.close()
        raise
    r = rna.rna or View(rna.obs_table)
    p = prot.prot or View(prot.obs_table)
    return RawInput(fmt="10x-mtx", files=rna.files + prot.files, rna=r, prot=p, hto=rna.hto or prot.hto,
                    closers=rna.closers + prot.closers, notes=rna.notes + prot.notes)


def open_10x_mtx(path: Path) -> RawInput:
    """Open a ``filtered_feature_bc_matrix/`` folder (``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``).

    Cell Ranger v2 folders (``genes.tsv``, uncompressed) are read as RNA only; file names may carry a prefix
    (``GSM..._matrix.mtx.gz``) when each is unique in the folder.
    """
    folder = path if path.is_dir() else path.parent
    mtx = mtx_file(folder)
    if mtx is None:
        raise InputError(f"{folder}: no matrix.mtx.gz (not a Cell Ranger matrix folder)")
    feat_path, bc_path = _find(folder, "features.tsv", "genes.tsv"), _find(folder, "barcodes.tsv")
    feats, bcs = _read_tsv(feat_path), _read_tsv(bc_path)
    names = feats[1] if feats.shape[1] > 1 else feats[0]
    features = pd.DataFrame({
        "gene_ids": feats[0].to_numpy(),
        "feature_type": feats[2].to_numpy() if feats.shape[1] > 2 else GEX,
    }, index=pd.Index(names.astype(str).to_numpy()))
    barcodes = pd.Index(bcs[0].astype(str).to_numpy())
    size, skip, _field = _mtx_header(mtx)
    if (size[0], size[1]) != (len(features), len(barcodes)):
        raise InputError(f"{mtx}: declares {size[0]} features x {size[1]} barcodes but the folder lists "
                         f"{len(features)} features and {len(barcodes)} barcodes (shape mismatch)")
    tmp = Path(tempfile.mkdtemp(prefix="omicsclip-mtx-"))
    cleanup = partial(shutil.rmtree, tmp, ignore_errors=True)
    try:
        data, indices, indptr = _mtx_to_csr(mtx, size, skip, tmp)
        table = CsrArraysTable(mtx, "matrix", barcodes, features, data=data, indices=indices, indptr=indptr)
        table.sort_indices = True
    except BaseException:
        cleanup()
        raise
    raw = split_feature_types(table, RawInput(fmt="10x-mtx", files=[mtx, feat_path, bc_path],
                                              obs_table=table))
    raw.closers.append(cleanup)
    return raw

