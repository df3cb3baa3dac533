"""Benchmark: peak memory of streaming an ``.h5ad`` through ``open_anndata`` (backed, dask) vs loading it whole.

A synthetic ``.h5ad`` (CSR ``X`` of integer counts, protein counts in ``obsm["protein"]``) is written block by
block with h5py. Every case runs in a fresh subprocess (separate peaks, VmHWM of that process):

* ``dense``   ``anndata.read_h5ad(p)`` then ``X.toarray()`` (the in-memory baseline; ratios are against it)
* ``sparse``  ``anndata.read_h5ad(p)`` (whole CSR in memory), streamed through ``open_anndata``
* ``backed``  ``anndata.read_h5ad(p, backed="r")`` streamed through ``open_anndata(...).iter_chunks``
* ``dask``    ``X`` from ``anndata.experimental.read_elem_lazy`` (dask, sparse row blocks) streamed the same way

Each streaming case sums the RNA and protein counts, checked against the sums known from writing. ``--limit-mb``
runs the cases under ``RLIMIT_DATA`` = (what the interpreter and imports use) + that many MB: the streaming
cases finish, the whole loads fail (the test ``tests/io/test_bounded_memory.py`` does exactly this).

    python bench/lazy_memory.py                                  # 50,000 and 200,000 cells x 2,000 genes
    python bench/lazy_memory.py --cells 20000 --cases backed,dask --limit-mb 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CASES = ("dense", "sparse", "backed", "dask")
_BLOCK = 2000  # cells per written block


def write_counts_h5ad(path: Path, n_cells: int, n_genes: int = 2000, nnz_per_cell: int = 300,
                      n_proteins: int = 20, seed: int = 0) -> dict:
    """Write ``path`` block by block (memory: one block + the protein matrix); return the exact sums."""
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    rng = np.random.default_rng(seed)
    k = min(nnz_per_cell, n_genes)
    # column pattern of one block: rows cycle through 16 sets of k distinct sorted genes (drawn once)
    patterns = [np.sort(rng.choice(n_genes, k, replace=False)) for _ in range(16)]
    cols = np.tile(np.concatenate(patterns), -(-_BLOCK // 16))[:_BLOCK * k].astype(np.int32)
    rna_sum = 0
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        data = x.create_dataset("data", shape=(n_cells * k,), dtype=np.float32, chunks=(1 << 18,))
        indices = x.create_dataset("indices", shape=(n_cells * k,), dtype=np.int32, chunks=(1 << 18,))
        values = rng.geometric(0.4, size=_BLOCK * k).astype(np.float32)  # one block's counts, shifted per block
        for b, start in enumerate(range(0, n_cells, _BLOCK)):
            n = min(_BLOCK, n_cells - start)
            vals = values[:n * k] + np.float32(b % 4)
            rna_sum += int(vals.sum(dtype=np.int64))
            data[start * k:(start + n) * k] = vals
            indices[start * k:(start + n) * k] = cols[:n * k]
        x.create_dataset("indptr", data=np.arange(n_cells + 1, dtype=np.int64) * k)
        barcodes = pd.Index([f"CELL{i:09d}-1" for i in range(n_cells)])
        prot = rng.poisson(30, size=(n_cells, n_proteins)).astype(np.float32)
        obs = pd.DataFrame({"batch": pd.Categorical(np.where(np.arange(n_cells) % 2, "a", "b"))}, index=barcodes)
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index([f"GENE{i:05d}" for i in range(n_genes)])))
        names = [f"CD{i}" for i in range(n_proteins)]
        write_elem(f, "obsm", {"protein": pd.DataFrame(prot, index=barcodes, columns=names)})
        for key in ("varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    return {"n_cells": n_cells, "rna_sum": rna_sum, "prot_sum": int(prot.sum(dtype=np.int64)),
            "x_mb": n_cells * k * 8 / 2**20, "file_mb": path.stat().st_size / 2**20}


# ---- one case, in a fresh process -------------------------------------------------------------------------------
def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


def child(case: str, path: str, chunk: int, limit_mb: float) -> dict:
    """Run one case; with ``limit_mb`` > 0 under RLIMIT_DATA = data size after imports + ``limit_mb``."""
    import warnings

    warnings.simplefilter("ignore")
    import anndata as ad
    import h5py
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    from omicsclip.io.anndata_input import natural_chunk_rows, open_anndata

    base_data, base_rss = _status_mb("VmData"), _status_mb("VmRSS")
    out = {"case": case, "vmdata_after_imports_mb": base_data, "rss_after_imports_mb": base_rss}
    if limit_mb > 0:
        limit = int((base_data + limit_mb) * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        out["rlimit_data_mb"] = limit / 2**20
    t0 = time.perf_counter()
    rna = prot = 0.0
    n = 0
    if case == "dense":
        a = ad.read_h5ad(path)
        dense = a.X.toarray()
        rna, prot, n = float(dense.sum(dtype=np.float64)), float(a.obsm["protein"].to_numpy().sum(dtype=np.float64)), dense.shape[0]
    else:
        f = None
        if case == "sparse":
            a = ad.read_h5ad(path)
        elif case == "backed":
            a = ad.read_h5ad(path, backed="r")
        elif case == "dask":
            f = h5py.File(path, "r")
            a = ad.AnnData(X=read_elem_lazy(f["X"], chunks=(chunk, -1)), obs=read_elem(f["obs"]),
                           var=read_elem(f["var"]), obsm={"protein": read_elem(f["obsm/protein"])})
        else:
            raise SystemExit(f"unknown case {case}")
        with open_anndata(a) as src:
            size = natural_chunk_rows(src) or chunk
            out["chunk_rows"] = size
            for c in src.iter_chunks(size):
                rna += float(c.rna.sum(dtype=np.float64))
                prot += float(c.prot.sum(dtype=np.float64))
                n += c.n_cells
        if f is not None:
            f.close()
    out.update({"seconds": time.perf_counter() - t0, "rna_sum": rna, "prot_sum": prot, "n_cells": n,
                "peak_rss_mb": _status_mb("VmHWM")})
    return out


def run_case(case: str, path: Path, *, chunk: int = 5000, limit_mb: float = 0, timeout: float = 600) -> dict:
    """Run :func:`child` in a fresh interpreter; ``{"error": last stderr line, "returncode": ...}`` if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, str(path), str(chunk), str(limit_mb)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines()
        return {"case": case, "returncode": p.returncode, "error": lines[-1] if lines else f"exit {p.returncode}",
                "memory_error": "MemoryError" in p.stderr}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="50000,200000", help="comma-separated cell counts")
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--nnz", type=int, default=300, help="non-zero genes per cell")
    ap.add_argument("--proteins", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=5000, help="cells per chunk (and dask row block)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--limit-mb", type=float, default=0, help="RLIMIT_DATA headroom above the imports (0: none)")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "lazy_memory.json"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case, path, chunk, limit = args.child
        print(json.dumps(child(case, path, int(chunk), float(limit))))
        return
    results = []
    for n_cells in [int(c) for c in args.cells.split(",")]:
        tmp = Path(tempfile.mkdtemp(prefix="omicsclip-lazy-", dir=args.tmp))
        try:
            t0 = time.perf_counter()
            truth = write_counts_h5ad(tmp / "cells.h5ad", n_cells, args.genes, args.nnz, args.proteins)
            row = {**truth, "n_genes": args.genes, "nnz_per_cell": args.nnz, "chunk": args.chunk,
                   "limit_mb": args.limit_mb, "generate_s": time.perf_counter() - t0, "cases": {}}
            for case in args.cases.split(","):
                res = run_case(case, tmp / "cells.h5ad", chunk=args.chunk, limit_mb=args.limit_mb)
                if "error" not in res:
                    res["sums_ok"] = (res["n_cells"] == n_cells and res["rna_sum"] == truth["rna_sum"]
                                      and res["prot_sum"] == truth["prot_sum"])
                row["cases"][case] = res
            base = row["cases"].get("dense", {}).get("peak_rss_mb")
            for res in row["cases"].values():
                if base and "peak_rss_mb" in res:
                    res["rss_ratio_vs_dense"] = res["peak_rss_mb"] / base
            results.append(row)
            print(json.dumps(row), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "command": " ".join(["python", "bench/lazy_memory.py", *sys.argv[1:]]), "results": results}
    from omicsclip.io.jsonfile import write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
