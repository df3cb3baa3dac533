"""What a reference index folder must hold: ``meta.json`` validation, its file names, the cell ids, the index kind.

:class:`omicsclip.index.reference.ReferenceIndex` writes the folder and loads it through these checks, so that a
corrupt, truncated or hand-edited folder is refused with one line naming the file and key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from omicsclip.conventions import MODALITIES
from omicsclip.errors import InputError
from omicsclip.index.faiss_index import KINDS, METRIC
from omicsclip.index.mapping_score import STATISTIC
from omicsclip.io.jsonfile import read_json_object
from omicsclip.io.tsv import read_tsv
from omicsclip.model.statecheck import Fields, one_line, show

FORMAT_VERSION = 1
META, IDS, PROTEIN, OBS = "meta.json", "cell_ids.tsv", "reference_protein.npy", "reference_obs.parquet"
MAPPING = "mapping_calibration.npy"  # the mapping score's reference sample (omicsclip.index.mapping_score)

_INT_MAX = 2**31 - 1  # faiss search parameters are C ints
_PARAM_RANGES = {"nlist": (1, _INT_MAX), "nprobe": (1, _INT_MAX), "pq_m": (1, _INT_MAX), "pq_refine": (0, 4096),
                 "hnsw_m": (1, _INT_MAX), "ef_construction": (1, _INT_MAX), "ef_search": (1, _INT_MAX)}


def read_meta(path: Path) -> dict[str, Any]:
    """Read and validate the ``meta.json`` of index folder ``path``.

    Parameters
    ----------
    path
        The index folder.

    Returns
    -------
    dict
        The metadata (format version, metric, dimension, kind, parameters, modalities, fingerprint, files ...).

    Raises
    ------
    InputError
        The folder or its ``meta.json`` is missing, of another format, or fails :func:`check_meta`.
    """
    if not path.is_dir():
        raise InputError(f"{path}: index folder not found")
    f = path / META
    if not f.exists():
        raise InputError(f"{f}: not found; {path} is not an omicsclip index folder")
    meta = read_json_object(f)
    need = ("format_version", "metric", "dim", "n", "kind", "params", "modalities", "model_fingerprint")
    missing = [k for k in need if k not in meta]
    if missing:
        raise InputError(f"{f}: missing keys {missing}; rebuild the index")
    if meta["format_version"] != FORMAT_VERSION:
        raise InputError(f"{f}: index format {show(meta['format_version'])} is not supported "
                         f"(expected {FORMAT_VERSION})")
    if meta["metric"] != METRIC:
        raise InputError(f"{f}: metric {show(meta['metric'])} is not supported (expected {METRIC})")
    check_meta(Fields(f, meta), meta)
    return meta


def check_meta(f: Fields, meta: dict[str, Any]) -> None:
    """Validate ``meta.json`` by key (types, ranges, and that ``files`` covers every file a load reads).

    Parameters
    ----------
    f
        Field checker over ``meta`` (names the file in its errors).
    meta
        The parsed ``meta.json``.

    Raises
    ------
    InputError
        Naming the first bad key.
    """
    f.integer("dim", 1, _INT_MAX)
    f.integer("n", 1, _INT_MAX)
    kind = f.text("kind", KINDS)
    f.text("factory")
    f.text("model_fingerprint")
    p = f.sub("params")
    if p.text("kind", KINDS) != kind:
        raise p.fail("kind", f"is {show(p.obj['kind'])} but kind is {kind!r}")
    for key, (lo, hi) in _PARAM_RANGES.items():
        if key in p.obj:
            p.integer(key, lo, hi)
    mods = f.names("modalities", empty=False)
    if any(m not in MODALITIES for m in mods):
        raise f.fail("modalities", f"is {show(mods)}, expected some of {', '.join(MODALITIES)}")
    if f.raw("proteins") is not None:
        f.names("proteins", empty=False)
    f.names("label_keys")
    if f.has("mapping"):  # the mapping score's calibration (absent from folders written before it)
        mp = f.sub("mapping")
        mp.text("statistic", (STATISTIC,))
        mp.integer("k", 1, _INT_MAX)
        mp.integer("n_sample", 1, _INT_MAX)
        mp.integer("seed")
        if any(m not in mods for m in mp.names("modalities", empty=False)):
            raise mp.fail("modalities", f"is {show(mp.obj['modalities'])}, expected some of {show(mods)}")
    files = f.sub("files")
    for name in files.obj:
        if name not in (IDS, PROTEIN, OBS, MAPPING, *(f"{m}.faiss" for m in MODALITIES)):
            raise files.fail(show(name), "is not a file of an index folder")
        files.text(name)
    calibrated = [MAPPING] if f.has("mapping") else []
    unlisted = [n for n in (IDS, *calibrated, *(f"{m}.faiss" for m in mods)) if n not in files.obj]
    if unlisted:
        raise files.fail(unlisted[0], "is missing (every file of the index has its sha256 there)")


def kind_of(faiss: Any, index: Any) -> str:
    """Return what a CPU faiss index read from disk is.

    Parameters
    ----------
    faiss
        The imported ``faiss`` module.
    index
        A CPU faiss index.

    Returns
    -------
    str
        ``flat`` | ``ivf_flat`` | ``ivf_sq`` | ``ivf_pq`` | ``hnsw``.
    """
    if hasattr(index, "hnsw"):
        return "hnsw"
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return "flat"
    name = type(faiss.downcast_index(ivf)).__name__
    return "ivf_pq" if "PQ" in name else "ivf_sq" if "ScalarQuantizer" in name else "ivf_flat"


def read_ids(path: Path, n: int) -> np.ndarray:
    """Read the reference cell ids of ``cell_ids.tsv`` (escaped by :func:`omicsclip.io.tsv.to_tsv`).

    Parameters
    ----------
    path
        The ``cell_ids.tsv`` file.
    n
        How many ids ``meta.json`` promises.

    Returns
    -------
    numpy.ndarray
        The ``n`` unique ids (object array of str), in row order.

    Raises
    ------
    InputError
        Unreadable, another count, or duplicates.
    """
    try:
        ids = read_tsv(path, dtype=str)["cell_id"].to_numpy(dtype=object)
    except Exception as exc:  # noqa: BLE001 - pandas parser errors, a missing column, bad encoding
        raise InputError(f"{path}: cannot read cell ids ({type(exc).__name__}: {one_line(exc, 80)})") from None
    if len(ids) != n:
        raise InputError(f"{path}: {len(ids)} cell ids, meta.json says {n}")
    if len(set(ids.tolist())) != n:
        raise InputError(f"{path}: cell ids are not unique")
    return ids
