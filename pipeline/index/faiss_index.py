"""FAISS indices over L2-normalised embeddings: choose a kind, build, tune search parameters, search.

Every index uses the inner product on unit vectors (cosine similarity), so similarities are comparable across
kinds. Exact (flat) search is the default up to ``exact_max_cells`` reference cells; above it an approximate index
(IVF-Flat, IVF with float16 vectors (``ivf_sq``, half the memory), IVF-PQ or HNSW) is built with parameters from the config or derived from the reference size. When faiss
sees a GPU, flat and IVF indices are built and searched there; HNSW and refined IVF-PQ stay on the CPU. Indices are
always stored as CPU indices, so an index built on a GPU machine loads anywhere.

The on-disk folder (ids, metadata, reference protein, labels) is handled by :mod:`omicsclip.index.reference`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from omicsclip.errors import InputError
from omicsclip.progress import Progress, format_duration

log = logging.getLogger(__name__)
# faiss' loader reports at INFO each instruction set it tries, e.g. ModuleNotFoundError('No module named
# 'faiss.swigfaiss_avx512'): not an error (it falls back to the next build), so only its warnings are shown.
# Set here, before any ``import faiss`` (every module that imports faiss imports this one first).
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

KINDS = ("flat", "ivf_flat", "ivf_sq", "ivf_pq", "hnsw")
METRIC = "inner_product"
_IVF_KINDS = ("ivf_flat", "ivf_sq", "ivf_pq")
_GPU_KINDS = ("flat", "ivf_flat", "ivf_sq", "ivf_pq")
_MIN_POINTS_PER_LIST = 39  # faiss warns (and k-means degrades) below this many training points per list
# IVF k-means: its cost is sample x nlist x iterations, i.e. grows like n with nlist = 4 sqrt(n) and a sample of
# this many points per list; 40 points and 10 iterations (before: 64 and faiss' 25) keep recall@10 >= 0.98 at the
# default nprobe on clustered 320-d embeddings up to 1M cells (bench/index_scale.py) at a quarter of the cost.
_TRAIN_POINTS_PER_LIST = 40
_KMEANS_ITERATIONS = 10
# Above this many lists, cells are assigned to lists through an HNSW graph over the centroids instead of comparing
# each cell with every centroid (which makes filling the index grow like n * nlist = n^1.5). Only the assignment
# is approximate; the stored index keeps its flat quantizer, so search is unchanged.
_HNSW_ASSIGN_MIN_LISTS = 1024
_HNSW_ASSIGN_M = 32
# 1M cells, 4000 lists (bench/index_scale.py data): recall@10 0.977 (exact assignment: 0.982; efSearch 16: 0.959)
# in half the time of the exact assignment
_HNSW_ASSIGN_EF = 32
_ADD_CHUNK = 100_000  # vectors added to an index per call (bounded temporary memory, a progress step each)


def _faiss():
    import faiss

    return faiss


@dataclass(frozen=True)
class IndexParams:
    """Resolved parameters of one index (no "auto" left); stored in ``meta.json``.

    Attributes
    ----------
    kind
        ``flat`` | ``ivf_flat`` | ``ivf_sq`` (IVF, vectors stored as float16) | ``ivf_pq`` | ``hnsw``.
    nlist
        IVF inverted lists (IVF kinds only).
    nprobe
        IVF lists visited per query.
    pq_m
        IVF-PQ sub-quantizers (must divide the dimension), 8 bits each.
    pq_refine
        IVF-PQ re-ranking: ``pq_refine * k`` PQ candidates re-scored exactly (0 = plain PQ).
    hnsw_m, ef_construction, ef_search
        HNSW graph degree and beam widths.
    """

    kind: str
    nlist: int = 0
    nprobe: int = 16
    pq_m: int = 16
    pq_refine: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128

    def to_dict(self) -> dict[str, Any]:
        """Only the parameters that matter for this kind."""
        d = asdict(self)
        keep = {"flat": (), "ivf_flat": ("nlist", "nprobe"), "ivf_sq": ("nlist", "nprobe"), "ivf_pq": ("nlist", "nprobe", "pq_m", "pq_refine"),
                "hnsw": ("hnsw_m", "ef_construction", "ef_search")}[self.kind]
        return {"kind": self.kind, **{k: d[k] for k in keep}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IndexParams:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})


def resolve_params(n: int, dim: int, section: Mapping[str, Any]) -> IndexParams:
    """Turn the ``index:`` config section into concrete parameters for ``n`` reference cells of ``dim``.

    Parameters
    ----------
    n, dim
        Reference size and embedding dimension.
    section
        The ``index:`` config section (``kind`` may be ``auto``; ``nlist`` 0 means ``4 * sqrt(n)``).
    """
    if n < 1:
        raise InputError("index: no reference cells to index")
    kind = str(section["kind"])
    if kind == "auto":
        kind = "flat" if n <= int(section["exact_max_cells"]) else str(section["approximate"])
    if kind not in KINDS:
        raise InputError(f"index.kind: unknown index kind {kind!r} (choose from {', '.join(KINDS)}, auto)")
    p = IndexParams(
        kind=kind,
        nlist=int(section["nlist"]),
        nprobe=int(section["nprobe"]),
        pq_m=int(section["pq_m"]),
        pq_refine=int(section["pq_refine"]),
        hnsw_m=int(section["hnsw_m"]),
        ef_construction=int(section["ef_construction"]),
        ef_search=int(section["ef_search"]),
    )
    if kind in _IVF_KINDS:
        nlist = p.nlist or int(round(4 * math.sqrt(n)))
        nlist = max(1, min(nlist, n // _MIN_POINTS_PER_LIST))
        if kind == "ivf_pq" and n < 256 * _MIN_POINTS_PER_LIST // 4:
            raise InputError(f"index.kind=ivf_pq needs at least {256 * _MIN_POINTS_PER_LIST // 4} reference cells "
                             f"to train 256-centroid codebooks (got {n}); use flat or ivf_flat")
        p = replace(p, nlist=nlist, nprobe=min(p.nprobe, nlist))
    if kind == "ivf_pq" and dim % p.pq_m:
        raise InputError(f"index.pq_m={p.pq_m} must divide the embedding dimension {dim}")
    return p


def factory_string(params: IndexParams) -> str:
    """Return the faiss ``index_factory`` description of ``params`` (e.g. ``IVF894,Flat``)."""
    if params.kind == "flat":
        return "Flat"
    if params.kind == "ivf_flat":
        return f"IVF{params.nlist},Flat"
    if params.kind == "ivf_sq":
        return f"IVF{params.nlist},SQfp16"
    if params.kind == "ivf_pq":
        # "np": no polysemous training (slow, useless for IVF search); RFlat: exact re-ranking of candidates
        return f"IVF{params.nlist},PQ{params.pq_m}x8np" + (",RFlat" if params.pq_refine > 0 else "")
    return f"HNSW{params.hnsw_m},Flat"


def set_threads(threads: int) -> None:
    """Use ``threads`` OpenMP threads in faiss (0 keeps faiss' default)."""
    if threads > 0:
        _faiss().omp_set_num_threads(int(threads))


def gpu_enabled(use_gpu: bool | str) -> bool:
    """Whether to use a GPU: ``auto`` when faiss sees one, ``True`` requires one, ``False`` never."""
    if use_gpu is False or use_gpu == "false":
        return False
    faiss = _faiss()
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n_gpus > 0:
        return True
    if use_gpu is True or use_gpu == "true":
        raise InputError("index.use_gpu=true but faiss sees no GPU (install faiss-gpu or set index.use_gpu=auto)")
    return False


def _gpu_capable(index: Any) -> bool:
    """Flat and IVF indices move to the GPU; HNSW and refined PQ (IndexRefine) do not."""
    faiss = _faiss()
    return isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ))


def to_gpu(index: Any) -> Any:
    """Return a GPU copy of a CPU index (device 0), or the index itself when faiss cannot move it."""
    if not _gpu_capable(index):
        log.info("index %s stays on the CPU (no GPU implementation)", type(index).__name__)
        return index
    faiss = _faiss()
    res = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
    gpu_index.referenced_objects = [res]  # keep the resources alive as long as the index
    return gpu_index


def as_query_matrix(x: np.ndarray, dim: int, *, what: str = "embeddings") -> np.ndarray:
    """Contiguous float32 ``(n, dim)`` array; one-line error for wrong shapes or non-finite values."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"{what}: expected an (n, {dim}) array, got shape {tuple(x.shape)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{what}: contains NaN or infinite values")
    return x


def build_index(x: np.ndarray, params: IndexParams, *, use_gpu: bool | str = "auto", seed: int = 0,
                desc: str = "index") -> Any:
    """Build a CPU faiss index over unit vectors ``x`` (n x d) with inner-product metric.

    IVF training (k-means) is logged as one phase; vectors are added in chunks of ``_ADD_CHUNK`` with progress
    (:class:`omicsclip.progress.Progress`).

    Parameters
    ----------
    x
        Reference embeddings, L2-normalised float32.
    params
        Resolved parameters (:func:`resolve_params`).
    use_gpu
        ``auto`` | ``True`` | ``False``: train and fill the index on a GPU when one is used.
    seed
        Seeds the IVF training sample and k-means.
    desc
        Label of the progress and log lines (e.g. ``index rna``).

    Returns
    -------
    faiss.Index
        A CPU index with search parameters set; positions are the row numbers of ``x``.
    """
    faiss = _faiss()
    if np.ndim(x) != 2 or np.shape(x)[0] == 0:
        raise InputError(f"index: reference embeddings must be a non-empty (n, d) array, got shape {np.shape(x)}")
    x = as_query_matrix(x, np.shape(x)[1], what="reference embeddings")
    n, dim = x.shape
    index = faiss.index_factory(dim, factory_string(params), faiss.METRIC_INNER_PRODUCT)
    if params.kind == "hnsw":
        index.hnsw.efConstruction = params.ef_construction
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index)) if params.kind.startswith("ivf") else None
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.niter = _KMEANS_ITERATIONS
        if params.kind == "ivf_pq":  # low-dimensional codebooks converge fast; faiss' defaults cost ~10x more
            ivf.pq.cp.max_points_per_centroid = 64
            ivf.pq.cp.niter = 10
            ivf.pq.cp.seed = seed
    gpu = gpu_enabled(use_gpu) and params.kind in _GPU_KINDS and not (params.kind == "ivf_pq" and params.pq_refine)
    work = to_gpu(index) if gpu else index
    gpu = work is not index
    if not work.is_trained:
        n_train = min(n, _TRAIN_POINTS_PER_LIST * params.nlist)
        sample = x if n_train == n else x[np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))]
        t0 = time.perf_counter()
        log.info("%s: training %s (k-means, %d lists) on %d cells", desc, factory_string(params), params.nlist,
                 n_train)
        work.train(sample)
        log.info("%s: trained in %s", desc, format_duration(time.perf_counter() - t0))
    if params.kind in ("ivf_flat", "ivf_sq") and not gpu:
        _add_preassigned(ivf, x, desc)
    else:
        with Progress(n, desc, "cells", logger=log) as progress:
            for start in range(0, n, _ADD_CHUNK):
                work.add(x[start:start + _ADD_CHUNK])
                progress.update(min(_ADD_CHUNK, n - start))
    index = _faiss().index_gpu_to_cpu(work) if gpu else work
    set_search_params(index, params)
    return index


def _assign(ivf: Any, x: np.ndarray) -> np.ndarray:
    """Return the inverted list of every row of ``x`` (int64), through an HNSW graph over many centroids."""
    faiss = _faiss()
    quantizer = ivf.quantizer
    if ivf.nlist >= _HNSW_ASSIGN_MIN_LISTS:
        graph = faiss.IndexHNSWFlat(ivf.d, _HNSW_ASSIGN_M, ivf.metric_type)
        graph.add(quantizer.reconstruct_n(0, ivf.nlist))
        graph.hnsw.efSearch = _HNSW_ASSIGN_EF
        quantizer = graph
    lists = np.empty(len(x), np.int64)
    for start in range(0, len(x), _ADD_CHUNK):
        lists[start:start + _ADD_CHUNK] = quantizer.assign(x[start:start + _ADD_CHUNK], 1).ravel()
    if (lists < 0).any():  # the graph found no centroid (cannot happen with a connected graph): compare with all
        bad = np.flatnonzero(lists < 0)
        lists[bad] = ivf.quantizer.assign(x[bad], 1).ravel()
    return lists


def _add_preassigned(ivf: Any, x: np.ndarray, desc: str) -> None:
    """Fill a trained CPU IVF-Flat or IVF-SQ index with ``x``: assign every row first, size each list exactly, add.

    faiss grows a list one vector at a time (``std::vector``, capacity doubling), so a plain ``add`` leaves the
    lists holding ~1.4x the memory of their vectors, at the build's peak; sized up front they hold exactly it.
    """
    faiss = _faiss()
    n = len(x)
    t0 = time.perf_counter()
    lists = _assign(ivf, x)
    log.info("%s: assigned %d cells to %d lists in %s", desc, n, ivf.nlist, format_duration(time.perf_counter() - t0))
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    counts = np.bincount(lists, minlength=ivf.nlist)
    for list_no in np.flatnonzero(counts):  # reserve: a shrinking resize keeps the capacity
        invlists.resize(int(list_no), int(counts[list_no]))
        invlists.resize(int(list_no), 0)
    with Progress(n, desc, "cells", logger=log) as progress:
        for start in range(0, n, _ADD_CHUNK):
            xc = x[start:start + _ADD_CHUNK]
            ids = np.arange(start, start + len(xc), dtype=np.int64)
            ivf.add_core(len(xc), faiss.swig_ptr(xc), faiss.swig_ptr(ids), faiss.swig_ptr(lists[start:start + len(xc)]))
            progress.update(len(xc))


def set_search_params(index: Any, params: IndexParams) -> None:
    """Apply nprobe / efSearch / refinement factor to a (CPU or GPU) index."""
    faiss = _faiss()
    if params.kind in _IVF_KINDS:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = params.nprobe
        elif hasattr(index, "nprobe"):  # GPU IVF indices
            index.nprobe = params.nprobe
        if params.kind == "ivf_pq" and params.pq_refine and hasattr(index, "k_factor"):
            index.k_factor = float(params.pq_refine)
    elif params.kind == "hnsw":
        index.hnsw.efSearch = params.ef_search


def search(index: Any, q: np.ndarray, k: int, *, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product neighbours of the rows of ``q``.

    Returns
    -------
    (similarities, positions)
        Both ``(n, min(k, index.ntotal))``; similarities float32 in descending order, positions int64.
    """
    q = as_query_matrix(q, index.d, what="query embeddings")
    if k < 1:
        raise InputError(f"k must be at least 1 (got {k})")
    k = min(int(k), int(index.ntotal))
    sims = np.empty((len(q), k), np.float32)
    pos = np.empty((len(q), k), np.int64)
    for start in range(0, len(q), chunk):
        sl = slice(start, start + chunk)
        sims[sl], pos[sl] = index.search(q[sl], k)
    return sims, pos


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product in numpy (the reference the flat index must reproduce)."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    k = min(k, x.shape[0])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
    pos = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(s, pos, axis=1).astype(np.float32), pos.astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k positions present in ``found`` (both n x k)."""
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / float(truth.size)
