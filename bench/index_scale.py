"""Time and memory of the reference index build (and of loading + searching it) at atlas scale.

For each size (default 100k, 300k, 1M cells) one fresh subprocess builds a reference folder the way
``omicsclip index`` does (:func:`omicsclip.index.reference.write_index_dir`: an index per modality, rna and prot,
the mapping-score calibration, the reference protein, ids and labels) from synthetic clustered embeddings of the
model's embedding width (``model.members * model.embed_dim``, bench/index_synth.py), read lazily one modality at a
time as the embeddings zarr is. It reports seconds and peak RSS (VmHWM) of the build, then, after the peak was
read, recall@10 of the rna index against exact search on sampled queries. A second fresh subprocess per size loads
the folder the way ``omicsclip query`` does and searches both indices for ``--query-cells`` query embeddings in
``query.chunk_cells`` chunks with the query's k (mapping_k + 1 on the same-modality index) and imputes protein from
the neighbours: its seconds and peak RSS bound the index side of the query stage (the model is not run).

    nice -n 5 .venv/bin/python bench/index_scale.py                            # 100k, 300k, 1M
    nice -n 5 .venv/bin/python bench/index_scale.py --sizes 100000 300000 --label quick
    nice -n 5 .venv/bin/python bench/index_scale.py --approximate ivf_sq --label after   # another approximate kind

Writes ``bench/results/index_scale.json`` (``--out``; runs with another ``--label`` are kept side by side) with the
log-log growth exponent of seconds over the sizes (least squares), as ``bench/scale.py`` computes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/index.py: spinning OpenMP workers under contention

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from index_synth import ClusteredEmbeddings  # noqa: E402  (bench/index_synth.py)

N_PROTEINS = 100
N_TYPES = 12
RECALL_QUERIES = 1000


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _status(key: str) -> float:
    """``VmHWM`` / ``VmRSS`` of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _dim() -> int:
    from omicsclip.config import default_config

    m = default_config()["model"]
    return int(m["members"]) * int(m["embed_dim"])


def _mixture(modality: str, dim: int) -> ClusteredEmbeddings:
    return ClusteredEmbeddings(dim, n_clusters=50, intrinsic_dim=10, seed={"rna": 0, "prot": 1}[modality])


def _embeddings(modality: str, n: int, dim: int, cache: Path, *, seed: int = 7, name: str = "") -> np.ndarray:
    """The ``n`` synthetic embeddings of ``modality``, generated once into ``cache`` and read whole from there."""
    f = cache / f"{name or modality}_{n}_{dim}.npy"
    if not f.exists():
        x = np.lib.format.open_memmap(f.with_suffix(".tmp.npy"), "w+", np.float32, (n, dim))
        start = 0
        for part in _mixture(modality, dim).iter_chunks(n, 10_000, seed=seed):
            x[start:start + len(part)] = part
            start += len(part)
        x.flush()
        del x
        f.with_suffix(".tmp.npy").rename(f)
    return np.load(f)


class _Lazy(Mapping):
    """``{modality: embeddings}`` read on access, one modality in memory at a time (as the embeddings zarr)."""

    def __init__(self, n: int, dim: int, cache: Path) -> None:
        self.n, self.dim, self.cache = n, dim, cache

    def __getitem__(self, m: str) -> np.ndarray:
        return _embeddings(m, self.n, self.dim, self.cache)

    def __iter__(self) -> Iterator[str]:
        return iter(("rna", "prot"))

    def __len__(self) -> int:
        return 2


def _log_rss() -> None:
    """Log to stderr with the RSS and peak RSS at each record (where the memory goes, phase by phase)."""
    import logging

    class _Rss(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.rss = f"rss {_status('VmRSS'):.0f} peak {_status('VmHWM'):.0f} MB"
            return True

    h = logging.StreamHandler()
    h.addFilter(_Rss())
    h.setFormatter(logging.Formatter("%(asctime)s %(rss)s %(name)s: %(message)s"))
    logging.getLogger("omicsclip").addHandler(h)
    logging.getLogger("omicsclip").setLevel(logging.INFO)


def build_one(n: int, out: Path, cache: Path) -> dict:
    """Build the reference folder for ``n`` cells in this process; seconds and peak RSS, then recall@10."""
    import pandas as pd

    _log_rss()

    from omicsclip.config import default_config
    from omicsclip.index.faiss_index import recall_at_k
    from omicsclip.index.reference import ReferenceIndex, write_index_dir

    dim = _dim()
    section = default_config()["index"]
    if os.environ.get("INDEX_SCALE_APPROXIMATE"):  # --approximate: another kind than the shipped default
        section["approximate"] = os.environ["INDEX_SCALE_APPROXIMATE"]
    if not all((cache / f"{m}_{n}_{dim}.npy").exists() for m in ("rna", "prot")):
        raise SystemExit("generate the data first (--generate): not inside the measured process")
    rng = np.random.default_rng(0)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    protein = rng.standard_normal((n, N_PROTEINS), dtype=np.float32)  # what reference_protein returns
    ids = [f"cell{i:08d}-b{i % 4}" for i in range(n)]
    labels = pd.DataFrame({"cell_type": np.asarray([f"type{t}" for t in range(N_TYPES)])[rng.integers(0, N_TYPES, n)]})
    write_index_dir(out, embeddings=_Lazy(n, dim, cache), cell_ids=ids, model_fingerprint="bench", section=section,
                    protein=protein, protein_names=[f"p{j}" for j in range(N_PROTEINS)], labels=labels,
                    overwrite=True)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    peak = _status("VmHWM")
    del protein, ids, labels
    meta = json.loads((out / "meta.json").read_text())
    ref = ReferenceIndex.load(out, use_gpu=False, verify=False)
    import faiss

    x = _embeddings("rna", n, dim, cache)
    q = _mixture("rna", dim).sample(RECALL_QUERIES, seed=123)[0]
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, truth = exact.search(q, 10)
    _, found = ref.search("rna", q, 10)
    return {"cells": n, "dim": dim, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_rss_mb": round(peak, 1),
            "factory": meta["factory"], "build_seconds": meta["build_seconds"],
            "recall_at_10": round(recall_at_k(found, truth), 4)}


def query_one(n: int, out: Path, query_cells: int, cache: Path) -> dict:
    """Load the folder as ``omicsclip query`` does and search/impute ``query_cells`` embeddings in chunks."""
    from omicsclip.config import default_config
    from omicsclip.index.impute import impute, neighbour_weights
    from omicsclip.index.reference import ReferenceIndex

    dim = _dim()
    qs = default_config()["query"]
    queries = _embeddings("rna", query_cells, dim, cache, seed=99, name="query")
    t0 = time.perf_counter()
    ref = ReferenceIndex.load(out, use_gpu=False)
    load_s = time.perf_counter() - t0
    after_load = _status("VmRSS")
    k = max(int(qs["k"]), int(qs["impute_k"]), ref.mapping.k + 1 if ref.mapping else 1)
    chunk = int(qs["chunk_cells"])
    t1 = time.perf_counter()
    for start in range(0, query_cells, chunk):
        part = queries[start:start + chunk]
        for m in ref.modalities:
            sims, pos = ref.search(m, part, k)
            if m == "rna" and ref.protein is not None:
                s, p = sims[:, :int(qs["impute_k"])], pos[:, :int(qs["impute_k"])]
                w = neighbour_weights(s, float(qs["temperature"]), p >= 0)
                impute(ref.protein, np.where(p >= 0, p, 0), w)
            _ = ref.cell_ids[pos[:, :int(qs["k"])].ravel()]
    search_s = time.perf_counter() - t1
    return {"cells": n, "query_cells": query_cells, "load_seconds": round(load_s, 2),
            "rss_after_load_mb": round(after_load, 1), "search_seconds": round(search_s, 2),
            "query_cells_per_s": round(query_cells / search_s, 1), "peak_rss_mb": round(_status("VmHWM"), 1)}


def growth_exponent(cells: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) on log(cells)."""
    if len(cells) < 2:
        return None
    return float(np.polyfit(np.log(cells), np.log(seconds), 1)[0])


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write(res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--query-cells", type=int, default=50_000)
    ap.add_argument("--label", default="current")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "index_scale.json")
    ap.add_argument("--no-query", action="store_true")
    ap.add_argument("--approximate", help="index.approximate for the builds (default: configs/default.yaml)")
    ap.add_argument("--build-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--query-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "index_scale_data",
                    help="where the synthetic embeddings are generated once (2 x cells x dim float32)")
    a = ap.parse_args(argv)
    a.cache.mkdir(parents=True, exist_ok=True)
    if a.approximate:
        os.environ["INDEX_SCALE_APPROXIMATE"] = a.approximate
    if a.generate:
        for m in ("rna", "prot"):
            _embeddings(m, a.generate, _dim(), a.cache)
        _embeddings("rna", a.query_cells, _dim(), a.cache, seed=99, name="query")
        print("{}")
        return
    if a.build_one:
        print(json.dumps(build_one(a.build_one, a.dir, a.cache)))
        return
    if a.query_one:
        print(json.dumps(query_one(a.query_one, a.dir, a.query_cells, a.cache)))
        return
    builds, queries = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="index_scale_") as tmp:
        for n in a.sizes:
            d = Path(tmp) / f"ref{n}"
            _child(["--generate", str(n), "--cache", str(a.cache), "--query-cells", str(a.query_cells)])
            builds.append(_child(["--build-one", str(n), "--dir", str(d), "--cache", str(a.cache)]))
            print(json.dumps(builds[-1]), flush=True)
            if not a.no_query:
                queries.append(_child(["--query-one", str(n), "--dir", str(d), "--query-cells", str(a.query_cells),
                                       "--cache", str(a.cache)]))
                print(json.dumps(queries[-1]), flush=True)
    run = {"build": builds, "query": queries,
           "build_exponent": growth_exponent([b["cells"] for b in builds], [b["seconds"] for b in builds]),
           "build_cpu_exponent": growth_exponent([b["cells"] for b in builds], [b["cpu_seconds"] for b in builds]),
           "query_search_exponent": growth_exponent([q["cells"] for q in queries],
                                                    [q["search_seconds"] for q in queries]) if queries else None,
           "machine": {"cpu_count": os.cpu_count(), "load_avg": list(os.getloadavg()[:2])},
           "wall_seconds": round(time.perf_counter() - t0, 1)}
    result = json.loads(a.out.read_text()) if a.out.exists() else {}
    result[a.label] = run
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: run[k] for k in ("build_exponent", "build_cpu_exponent", "query_search_exponent")}))


if __name__ == "__main__":
    main()
