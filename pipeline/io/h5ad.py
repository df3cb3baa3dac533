"""Readers for AnnData-encoded containers: ``.h5ad`` (one or a pair), ``.h5mu`` (MuData) and paired ``.zarr`` stores.

Matrices are not loaded: ``X`` stored as CSR (the anndata default) is read by row ranges straight from the
``data``/``indices``/``indptr`` arrays; dense ``X`` by row slices. Only a CSC ``X`` is loaded whole (logged).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omicsclip.errors import InputError
from omicsclip.io.features import name_list
from omicsclip.io.formats import READ_ERRORS, one_line, require_hdf5
from omicsclip.io.raw import RawInput
from omicsclip.io.tables import ColumnsTable, CountTable, CsrArraysTable, DenseTable, MemoryTable, View

log = logging.getLogger(__name__)

PROTEIN_OBSM_KEYS = ("protein", "protein_expression", "protein_counts", "prot", "adt", "ADT", "antibody",
                     "Antibody Capture")
HTO_OBSM_KEYS = ("hto", "HTO", "hashtag", "hashtags")
_ADT_TYPES = ("Antibody Capture", "ADT")
_GEX_TYPES = ("Gene Expression", "GEX")
_FEATURE_TYPE_COLS = ("feature_types", "feature_type")


def _open_h5(path: Path, fmt: str):
    import h5py

    require_hdf5(path, fmt)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as HDF5 (truncated or corrupt file: {one_line(exc)})") from None


def _corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(f"{path}: cannot read (truncated or corrupt file: {type(exc).__name__}: {one_line(exc)})")


def _read_elem(path: Path, elem: Any, what: str) -> Any:
    from anndata.io import read_elem

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_elem(elem)
    except Exception as exc:  # noqa: BLE001 - corrupt or unsupported element
        raise InputError(f"{path}: cannot read {what} (corrupt file or unsupported layout: {one_line(exc)})") from None


def _frame(path: Path, group: Any, what: str) -> pd.DataFrame:
    df = _read_elem(path, group, what)
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{path}: {what} is not a data frame")
    df.index = pd.Index([str(i) for i in df.index])
    return df


def _is_group(elem: Any) -> bool:
    return hasattr(elem, "keys")


def matrix_table(path: Path, elem: Any, what: str, barcodes: pd.Index, features: pd.DataFrame) -> CountTable:
    """Open a table over an anndata-encoded matrix element (CSR/CSC group or dense array), h5py or zarr."""
    if _is_group(elem):
        enc = str(elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", "")))
        if not {"data", "indices", "indptr"} <= set(elem.keys()):
            raise InputError(f"{path}: {what} is a group without data/indices/indptr (unsupported matrix layout)")
        shape = tuple(int(s) for s in elem.attrs.get("shape", (len(barcodes), len(features))))
        if shape != (len(barcodes), len(features)):
            raise InputError(f"{path}: {what} has shape {shape} but obs has {len(barcodes)} cells and var "
                             f"{len(features)} features (shape mismatch)")
        if enc in ("csr_matrix", "csr"):
            return CsrArraysTable(path, what, barcodes, features, data=elem["data"],
                                  indices=elem["indices"], indptr=elem["indptr"])
        if enc in ("csc_matrix", "csc"):
            log.warning("%s: %s is stored as CSC; loading it into memory (re-save as CSR to stream it)",
                        path, what)
            return MemoryTable(path, what, barcodes, features, _read_elem(path, elem, what))
        raise InputError(f"{path}: {what} has unsupported encoding {enc!r}")
    if len(getattr(elem, "shape", ())) != 2:
        raise InputError(f"{path}: {what} is not a 2-d matrix")
    return DenseTable(path, what, barcodes, features, elem)


def _names_from_uns(f: Any, key: str) -> list[str] | None:
    for cand in (f"uns/{key}_names", "uns/protein_names"):
        if cand in f:
            return [str(x.decode() if isinstance(x, bytes) else x) for x in np.asarray(f[cand][()]).ravel()]
    return None


def _obsm_table(path: Path, f: Any, key: str, barcodes: pd.Index, what: str) -> CountTable:
    """Open a table over ``obsm[key]``: DataFrame (names = columns), or array/sparse with names in ``uns``."""
    elem = f[f"obsm/{key}"]
    enc = str(elem.attrs.get("encoding-type", ""))
    if enc == "dataframe":
        names = [str(c) for c in np.asarray(elem.attrs.get("column-order", [])).ravel()]
        cols = [elem[c] if c in elem else None for c in names]
        if names and all(c is not None and not _is_group(c) and np.issubdtype(c.dtype, np.number)
                         for c in cols):  # numeric columns: stream them by rows
            return ColumnsTable(path, f"obsm['{key}']", barcodes, pd.DataFrame(index=pd.Index(names)), cols)
        df = _frame(path, elem, f"obsm['{key}']")
        names = [str(c) for c in df.columns]
        nonnum = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
        if nonnum:
            raise InputError(f"{path}: obsm['{key}'] has non-numeric columns {nonnum[:3]}")
        arr = df.to_numpy(dtype=np.float32)
        return DenseTable(path, f"obsm['{key}']", barcodes, pd.DataFrame(index=pd.Index(names)), arr)
    names = _names_from_uns(f, key)
    n_cols = int(elem.attrs["shape"][1]) if _is_group(elem) and "shape" in elem.attrs else (
        int(elem.shape[1]) if len(getattr(elem, "shape", ())) == 2 else -1)
    if names is None:
        raise InputError(f"{path}: obsm['{key}'] is an array without {what} names; store them in "
                         f"uns['{key}_names'] or uns['protein_names']")
    if len(names) != n_cols:
        raise InputError(f"{path}: obsm['{key}'] has {n_cols} columns but uns lists {len(names)} names "
                         "(shape mismatch)")
    return matrix_table(path, elem, f"obsm['{key}']", barcodes, pd.DataFrame(index=pd.Index(names)))


def _find_key(f: Any, candidates: tuple[str, ...], explicit: str | None) -> str | None:
    if "obsm" not in f:
        return None
    keys = list(f["obsm"].keys())
    if explicit:
        return explicit if explicit in keys else None
    return next((k for k in candidates if k in keys), None)


def _feature_type_col(var: pd.DataFrame) -> str | None:
    return next((c for c in _FEATURE_TYPE_COLS if c in var.columns), None)


def split_feature_types(raw: RawInput, table: CountTable, var: pd.DataFrame, what: str) -> bool:
    """Split one matrix into RNA, protein and hashtag views by ``var['feature_types']`` (as 10x writes it).

    Parameters
    ----------
    raw
        The input being built; its ``rna``, ``prot``, ``hto`` and ``notes`` are set when the split applies.
    table
        The matrix (all features).
    var
        Its feature annotations.
    what
        How to name the matrix in the note (e.g. ``X``).

    Returns
    -------
    bool
        Whether ``var`` has a feature-type column with antibody features (and the split was made).
    """
    ftcol = _feature_type_col(var)
    if ftcol is None or not var[ftcol].astype(str).isin(_ADT_TYPES).any():
        return False
    types = var[ftcol].astype(str).to_numpy()
    raw.rna = View(table, np.flatnonzero(np.isin(types, _GEX_TYPES)))
    raw.prot = View(table, np.flatnonzero(np.isin(types, _ADT_TYPES)))
    hto = np.flatnonzero(types == "Multiplexing Capture")
    raw.hto = View(table, hto) if len(hto) else None
    raw.notes.append(f"{what} split by var['{ftcol}'] into Gene Expression and Antibody Capture")
    return True


def both_feature_types(var: pd.DataFrame) -> bool:
    """Whether ``var``'s feature types mark gene and antibody columns of one matrix (a 10x combined ``X``)."""
    ftcol = _feature_type_col(var)
    if ftcol is None:
        return False
    types = var[ftcol].astype(str)
    return bool(types.isin(_GEX_TYPES).any() and types.isin(_ADT_TYPES).any())


def keep_one_modality(raw: RawInput, table: CountTable, var: pd.DataFrame, what: str, keep: str, *, path: Path,
                      key: str | None, explicit: str | None, open_table: Callable[[str], CountTable]) -> bool:
    """Fill ``raw`` with the one modality a user asked of one AnnData, where that is not ``X`` read as it.

    An ``X`` holding genes and antibodies (10x feature types) is split (the caller drops the other part). For
    ``"prot"``, a paired layout gives the protein counts in ``obsm[key]`` (``open_table(key)`` opens them), unless
    most of ``X``'s features are among its columns (``X`` is the protein and ``obsm`` a copy, e.g. a CLR; gene
    symbols such as CD4 that name a protein too are a small part of an RNA matrix). ``explicit`` (``protein_key``)
    is taken as given, and an error when absent. Returns whether ``raw`` is filled.
    """
    if both_feature_types(var) and split_feature_types(raw, table, var, what):
        return True
    if keep != "prot":
        return False
    if key is None:
        if explicit:
            raise InputError(f"{path}: no obsm['{explicit}'] (the protein_key given)")
        return False
    prot = open_table(key)
    if not explicit and var.index.isin(prot.features.index).mean() >= 0.5:
        return False
    raw.prot = View(prot)
    raw.notes.append(f"protein counts from obsm['{key}'] ({what}, other features, not read)")
    return True


def read_anndata_group(path: Path, g: Any, *, modality: str | None, protein_key: str | None,
                       label: str = "", layer: str | None = None, keep: str | None = None) -> RawInput:
    """Modalities of one AnnData group (root of an ``.h5ad`` or ``mod/<name>`` of an ``.h5mu``/store).

    ``modality="prot"`` reads ``X`` as protein counts; ``"rna"`` as RNA only; ``None`` finds protein in
    ``obsm`` or in ``X`` columns whose ``var['feature_types']`` is "Antibody Capture" (or "ADT").
    ``keep`` is a user's choice of one modality of the input (``query --modality``): of an ``X`` holding genes
    and antibodies (10x feature types), that part; ``"prot"`` of a paired layout (RNA in ``X``, protein in
    ``obsm``: :func:`keep_one_modality`) the ``obsm`` protein; else ``X`` read as that modality.
    ``layer`` reads ``layers[layer]`` instead of ``X`` (e.g. raw counts kept in ``layers["counts"]``).
    """
    pre = f"{label}/" if label else ""
    for key in ("obs", "var"):
        if key not in g:
            raise InputError(f"{path}: no {pre}{key} (not an AnnData file)")
    mkey = f"layers/{layer}" if layer else "X"
    if mkey not in g:
        have = sorted(g["layers"].keys()) if "layers" in g else []
        raise InputError(f"{path}: no {pre}{mkey} (layers: {name_list(have) or 'none'}; "
                         "choose one with --set ingest.layer=NAME)")
    obs = _frame(path, g["obs"], f"{pre}obs")
    var = _frame(path, g["var"], f"{pre}var")
    table = matrix_table(path, g[mkey], f"{pre}{mkey}", obs.index, var)
    raw = RawInput(fmt="h5ad", files=[path], obs=obs, obs_table=table)
    if keep is not None:  # the caller keeps only that modality of what is found
        if keep_one_modality(raw, table, var, f"{pre}{mkey}", keep, path=path, explicit=protein_key,
                             key=_find_key(g, PROTEIN_OBSM_KEYS, protein_key),
                             open_table=lambda k: _obsm_table(path, g, k, obs.index, "protein")):
            return raw
        modality = keep
    if modality == "prot":
        raw.prot = View(table)
        return raw
    if modality is None and split_feature_types(raw, table, var, f"{pre}{mkey}"):
        return raw
    raw.rna = View(table)
    if modality == "rna":
        return raw
    key = _find_key(g, PROTEIN_OBSM_KEYS, protein_key)
    if key is not None:
        raw.prot = View(_obsm_table(path, g, key, obs.index, "protein"))
    else:
        have = list(g["obsm"].keys()) if "obsm" in g else []
        raw.missing["prot"] = (f"no protein counts in {pre}obsm (looked for "
                               f"{protein_key or ', '.join(PROTEIN_OBSM_KEYS[:4])}; obsm has {have or 'nothing'})")
    hkey = _find_key(g, HTO_OBSM_KEYS, None)
    if hkey is not None:
        raw.hto = View(_obsm_table(path, g, hkey, obs.index, "hashtag"))
    return raw


def open_h5ad(path: Path, *, modality: str | None = None, protein_key: str | None = None,
              layer: str | None = None, keep: str | None = None) -> RawInput:
    """One ``.h5ad``: RNA in ``X``, protein in ``obsm`` (DataFrame, or array + ``uns['protein_names']``).

    ``modality``: what ``X`` holds; ``keep``: the one modality a user asked of it (:func:`read_anndata_group`).
    """
    f = _open_h5(path, "h5ad")
    try:
        raw = read_anndata_group(path, f, modality=modality, protein_key=protein_key, layer=layer, keep=keep)
    except READ_ERRORS as exc:
        f.close()
        raise _corrupt(path, exc) from None
    except BaseException:
        f.close()
        raise
    raw.closers.append(f.close)
    return raw


def open_h5ad_pair(rna_path: Path, prot_path: Path, *, layer: str | None = None) -> RawInput:
    """Two ``.h5ad`` files: RNA counts in the first's ``X``, protein counts in the second's ``X``."""
    rna = open_h5ad(rna_path, modality="rna", layer=layer)
    try:
        prot = open_h5ad(prot_path, modality="prot", layer=layer)
    except BaseException:
        rna.close()
        raise
    if rna.rna.n_features < prot.prot.n_features:
        log.warning("%s has fewer features (%d) than %s (%d): inputs are read as RNA then protein",
                    rna_path, rna.rna.n_features, prot_path, prot.prot.n_features)
    obs = rna.obs
    extra = [c for c in prot.obs.columns if c not in obs.columns]
    if extra and not obs.index.has_duplicates and not prot.obs.index.has_duplicates:
        obs = obs.join(prot.obs[extra], how="left")
    return RawInput(fmt="h5ad-pair", files=[rna_path, prot_path], rna=rna.rna, prot=prot.prot, obs=obs,
                    obs_table=rna.obs_table, closers=rna.closers + prot.closers)


def _mudata(path: Path, root: Any, fmt: str, rna_modality: str, prot_modality: str,
            protein_key: str | None, layer: str | None = None) -> RawInput:
    if "mod" not in root:
        raise InputError(f"{path}: no 'mod' group (not a MuData {fmt} file)")
    mods = list(root["mod"].keys())
    raw = RawInput(fmt=fmt, files=[path])
    for which, name in (("rna", rna_modality), ("prot", prot_modality)):
        if name not in mods:
            raw.missing[which] = (f"no modality {name!r} (has: {name_list(mods)}); set "
                                  f"--set ingest.{which}_modality=NAME")
            continue
        part = read_anndata_group(path, root[f"mod/{name}"], modality=which, protein_key=protein_key,
                                  label=f"mod/{name}", layer=layer)
        setattr(raw, which, getattr(part, which))
        if raw.obs is None:
            raw.obs, raw.obs_table = part.obs, part.obs_table
    if raw.obs is not None and "obs" in root:
        top = _frame(path, root["obs"], "obs")
        cols = [c for c in top.columns if ":" not in str(c) and c not in raw.obs.columns]
        if cols:
            raw.obs = raw.obs.join(top[cols], how="left")
    return raw


def open_h5mu(path: Path, *, rna_modality: str = "rna", prot_modality: str = "prot",
              protein_key: str | None = None, layer: str | None = None) -> RawInput:
    """Open a MuData ``.h5mu`` with an RNA and a protein modality (names configurable)."""
    f = _open_h5(path, "h5mu")
    try:
        raw = _mudata(path, f, "h5mu", rna_modality, prot_modality, protein_key, layer)
    except READ_ERRORS as exc:
        f.close()
        raise _corrupt(path, exc) from None
    except BaseException:
        f.close()
        raise
    raw.closers.append(f.close)
    return raw


def open_store(path: Path) -> RawInput:
    """Open a paired store written by ``omicsclip ingest`` (or any MuData zarr with ``rna``/``prot``)."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - not a zarr folder / corrupt metadata
        raise InputError(f"{path}: cannot open as a zarr store ({type(exc).__name__}: {one_line(exc)})") from None
    try:
        raw = _mudata(path, root, "zarr", "rna", "prot", None)
    except READ_ERRORS as exc:
        raise _corrupt(path, exc) from None
    if raw.prot is not None and "uns" in root and "panels" in root["uns"]:
        # a store pooled from several antibody panels (omicsclip pool): its zeros outside a cell's panel are
        # unmeasured, not counts, and only omicsclip.io.store (iter_store, read_store) masks them
        raw.prot = None
        raw.missing["prot"] = ("a store pooled from several antibody panels: its protein is read by omicsclip's "
                               "stages (embed, index, evaluate), not as an input")
    if raw.rna is not None and "uns" in root and "gene_panels" in root["uns"]:
        # pooled on the union of several datasets' genes: the zeros outside a cell's gene panel are unmeasured, so
        # as an input it offers the genes every dataset measured (their zeros are counts)
        from anndata.io import read_elem

        from omicsclip.io.panels import GENE_PANELS_KEY, panels_of

        # uns/gene_panels alone: store_info would read the whole obs (millions of rows in an atlas) again
        panels = panels_of({GENE_PANELS_KEY: read_elem(root["uns"][GENE_PANELS_KEY])}, GENE_PANELS_KEY) or {}
        shared = set.intersection(*(set(g) for g in panels.values())) if panels else set()
        mask = raw.rna.features.index.astype(str).isin(shared)
        if mask.any():
            raw.rna = raw.rna.subset(np.asarray(mask))
            raw.notes.append(f"a store pooled on the union of several datasets' genes: as an input, the "
                             f"{int(mask.sum())} genes every dataset measured")
        else:
            raw.rna = None
            raw.missing["rna"] = ("a store pooled on the union of several datasets' genes, none measured by all: "
                                  "its RNA is read by omicsclip's stages (embed, index, evaluate), not as an input")
    return raw
