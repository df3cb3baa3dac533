"""Atlas scale: every stage of the pipeline from 100k to 1M cells, wall seconds and peak RSS per stage and size.

Each size runs the real CLI, one subprocess per stage (so each stage's peak RSS is its own, read from
``wait4``): ``ingest`` (an ``.h5ad`` of 20,000 genes and 100 proteins into a store), ``train_steps`` (a fixed
number of optimiser steps, ``train.max_steps``, setup included), ``train`` (one full epoch, setup included; the
epoch alone is the ``train_epoch`` row, from the run's ``train_log.jsonl``), ``embed``, ``index``, ``query``
(every cell's RNA only, streamed: neighbours, imputed protein, transferred labels), ``finetune`` (the default
gated head) and ``predict`` (every cell). Written to ``bench/results/scale.json`` as ``rows`` of
``{stage, cells, seconds, peak_rss_mb, cells_per_s}`` plus, per stage, the log-log growth exponent (least squares
slope of seconds against cells over the sizes, and the slope between the two largest sizes, where fixed costs
weigh least) and the memory bounds of issue #16 (every stage but training under
4 GB at the largest size, training under 8 GB).

The data: the project's generator (:func:`omicsclip.io.synthetic.write_synthetic_h5ad`) draws a dense
negative-binomial matrix, about 3 ms a cell at 20,000 genes on this machine (55 minutes for 1M cells), so the
bench draws ``--base-cells`` cells once (4 batches, 12 types) and builds every size from them: replicate ``r`` of
the base has every RNA and protein count binomially thinned (keep 0.9, its own seed) and barcodes suffixed
``-r<r>``. Every size, the smallest included, is made this way, so the sizes differ in cell count only.

Run (30 to 90 minutes on 2 cores, with the machine's speed; the data need ~25 GB of disk under ``--workdir``)::

    .venv/bin/python bench/scale.py [--sizes 100000 300000 1000000] [--workdir /tmp/omicsclip_scale]

``--small`` runs a tiny version (a few thousand cells, 300 genes) in a few minutes: the test of this script.
``--keep`` keeps each size's outputs; ``--stages ingest predict`` then reruns just those stages on them and
replaces their rows. Peak RSS is each stage process's own high-water mark (``VmHWM``), see ``run_stage``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"

NON_TRAIN_MAX_MB = 4096  # issue #16: every stage except training under 4 GB at the largest size
TRAIN_MAX_MB = 8192  # training under 8 GB
MAX_EXPONENT = 1.15
TRAIN_STAGES = ("train_steps", "train", "train_epoch")
# the rows' stages in pipeline order; train_epoch is read from the train stage's log, the others are CLI runs
ROW_STAGES = ("ingest", "train_steps", "train", "train_epoch", "embed", "index", "query", "finetune", "predict")
STAGES = tuple(s for s in ROW_STAGES if s != "train_epoch")
KEEP = 0.9  # binomial thinning of each replicate's counts


# Each stage runs through this wrapper, which reports the stage's own peak RSS (VmHWM of its process) at exit.
# ``wait4``'s ru_maxrss is no good here: Linux carries the parent's high-water RSS into a child across fork/vfork
# and exec, so every stage's figure was at least this bench's own peak (about 1.9 GB after building the 1M-cell
# input), not the stage's.
_WRAPPER = """
import atexit, os, sys
from omicsclip.progress import peak_rss_mb
def _report():
    with open(os.environ['OMICSCLIP_BENCH_PEAK_FILE'], 'w') as out:
        out.write(repr(peak_rss_mb()))
atexit.register(_report)
from omicsclip.cli.main import app
app(args=sys.argv[1:], prog_name='omicsclip')
"""


def run_stage(args: list[str], log_path: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run one CLI stage; return (wall seconds, peak RSS in MB of that process). A failure stops the bench."""
    peak_file = log_path.with_suffix(".peak_mb")
    peak_file.unlink(missing_ok=True)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], stdout=log, stderr=subprocess.STDOUT,
                              env={**env, "OMICSCLIP_BENCH_PEAK_FILE": str(peak_file)}, check=False)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        sys.exit(f"stage failed (exit {proc.returncode}): omicsclip {' '.join(args)}\n{tail}")
    return seconds, float(peak_file.read_text())


def make_base(path: Path, cells: int, genes: int, proteins: int, seed: int) -> Path:
    """Draw the base cells with the project's generator (cached: reused when present)."""
    from omicsclip.io.synthetic import write_synthetic_h5ad

    if not path.exists():
        t0 = time.perf_counter()
        write_synthetic_h5ad(path, n_cells=cells, n_genes=genes, n_proteins=proteins, n_types=12, n_batches=4,
                             seed=seed)
        print(f"base data: {cells} cells x {genes} genes in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def replicate(base: Path, out: Path, n_cells: int, seed: int, chunk: int = 20_000) -> Path:
    """Write ``n_cells`` cells as thinned replicates of the base cells (the shared-data ``.h5ad`` layout)."""
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import read_elem, sparse_dataset, write_elem

    if out.exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(base, "r") as src, h5py.File(tmp, "w") as dst:
        x = sparse_dataset(src["X"])
        n_base = x.shape[0]
        obs, var = read_elem(src["obs"]), read_elem(src["var"])
        prot = read_elem(src["obsm/protein"])
        uns = read_elem(src["uns"])
        dst.attrs["encoding-type"], dst.attrs["encoding-version"] = "anndata", "0.1.0"
        obs_parts, prot_parts = [], []
        done = 0
        rep = 0
        while done < n_cells:
            rng = np.random.default_rng([seed, rep])
            take = min(n_base, n_cells - done)
            for start in range(0, take, chunk):
                stop = min(start + chunk, take)
                block = sp.csr_matrix(x[start:stop])
                block.data = rng.binomial(block.data.astype(np.int64), KEEP).astype(np.float32)
                block.eliminate_zeros()
                if "X" not in dst:
                    write_elem(dst, "X", block, dataset_kwargs={"chunks": True})
                else:
                    sparse_dataset(dst["X"]).append(block)
            o = obs.iloc[:take].copy()
            o.index = [f"{b}-r{rep}" for b in o.index]
            obs_parts.append(o)
            p = prot.iloc[:take]
            prot_parts.append(pd.DataFrame(rng.binomial(p.to_numpy().astype(np.int64), KEEP).astype(np.float32),
                                           index=o.index, columns=p.columns))
            done += take
            rep += 1
        obs_all = pd.concat(obs_parts)
        for col in ("cell_type", "batch"):
            obs_all[col] = pd.Categorical(obs_all[col].astype(str), categories=obs[col].cat.categories)
        write_elem(dst, "obs", obs_all)
        write_elem(dst, "var", var)
        write_elem(dst, "obsm", {"protein": pd.concat(prot_parts)})
        for key in ("varm", "obsp", "varp", "layers"):
            write_elem(dst, key, {})
        write_elem(dst, "uns", {**uns, "scale_bench": {"base": str(base), "replicates": rep, "keep": KEEP}})
    os.replace(tmp, out)
    return out


def growth_exponent(cells: list[int], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) against log(cells) (None with fewer than two sizes)."""
    if len(cells) < 2:
        return None
    return float(np.polyfit(np.log(cells), np.log(np.maximum(seconds, 1e-3)), 1)[0])


def run_size(n: int, base: Path, work: Path, steps: int, env: dict[str, str], seed: int,
             extra: dict[str, list[str]] | None = None, keep: bool = False,
             only: list[str] | None = None) -> list[dict]:
    """Every stage on ``n`` cells (or the stages in ``only``, on a kept run's outputs); return the rows."""
    d = work / f"n{n}"
    h5ad = work / f"cells_{n}.h5ad"
    if not only:  # (with ``only``, main has checked that the kept outputs are there)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        h5ad = replicate(base, h5ad, n, seed)
        print(f"[{n}] data ready in {time.perf_counter() - t0:.0f} s", flush=True)
    store, model, emb, index = d / "store.zarr", d / "model", d / "emb.zarr", d / "index"
    stages = [
        ("ingest", ["ingest", str(h5ad), "--out", str(store)]),
        ("train_steps", ["train", str(store), "--out", str(d / "model_steps"), "--set", f"train.max_steps={steps}",
                         "--set", "train.epochs=1"]),
        ("train", ["train", str(store), "--out", str(model), "--set", "train.epochs=1"]),
        ("embed", ["embed", str(store), "--model", str(model), "--out", str(emb)]),
        ("index", ["index", str(emb), "--out", str(index)]),
        ("query", ["query", str(store), "--model", str(model), "--index", str(index), "--out", str(d / "query"),
                   "--modality", "rna"]),
        ("finetune", ["finetune", str(emb), "--labels", "cell_type", "--out", str(d / "head")]),
        ("predict", ["predict", str(store), "--model", str(model), "--head", str(d / "head"), "--out",
                     str(d / "predictions.tsv")]),
    ]
    rows = []
    for stage, args in stages:
        if only and stage not in only:
            continue
        if only:  # rerun on a kept run: the stage replaces its own output (atomically, as the CLI does)
            args = [*args, "--overwrite"]
        args = args + [a for s in (extra or {}).get(stage, []) for a in ("--set", s)]
        load_before = os.getloadavg()[0]
        seconds, rss = run_stage(args, d / f"{stage}.log", env)
        row = {"stage": stage, "cells": n, "seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1),
               "peak_rss_source": "VmHWM",
               "cells_per_s": round(n / seconds, 1),  # the machine's 1-minute load before and after (noise)
               "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        if stage == "train_steps":
            row["steps"] = steps
        if stage == "train":
            row["footprint"] = _footprint(d / "train.log")
        new = [row, _epoch_row(model, n)] if stage == "train" else [row]
        for r in new:
            rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
            print(f"[{n}] {r['stage']:<12} {r['seconds']:>9.1f} s  {rss:>8} MB  {r['cells_per_s']:>10.0f} cells/s",
                  flush=True)
        if stage == "train":
            print(f"[{n}] training footprint: {row['footprint']}", flush=True)
        rows.extend(new)
    if not keep:
        shutil.rmtree(d)  # the next size needs the disk
    return rows


def _read_result(path: Path) -> dict:
    """An earlier result file (``--append``, ``--report-only``); a missing or unreadable one stops the bench."""
    try:
        result = json.loads(path.read_text())
        result["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"{path}: not a bench/scale.py result ({type(e).__name__}: {e})")
    return result


def _write_result(path: Path, result: dict) -> None:
    """The JSON and its markdown table, each replaced atomically (the project's writers)."""
    from omicsclip.io.atomic import atomic_path
    from omicsclip.io.jsonfile import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        write_json(tmp, result)
    with atomic_path(path.with_suffix(".md"), overwrite=True) as tmp:
        tmp.write_text(markdown(result))


def _stage_of(row: dict) -> str:
    """The stage that produced a row (``train_epoch`` comes from the ``train`` stage's log)."""
    return "train" if row["stage"] == "train_epoch" else row["stage"]


def _epoch_row(model: Path, n: int) -> dict:
    """The full epoch alone (from train_log.jsonl): seconds and training cells per second."""
    recs = [json.loads(line) for line in (model / "train_log.jsonl").read_text().splitlines() if line.strip()]
    info = json.loads((model / "model.json").read_text())
    n_train = int(info["n_cells"]["train"])
    sec = float(recs[0]["seconds"])
    return {"stage": "train_epoch", "cells": n, "seconds": round(sec, 2), "peak_rss_mb": None,
            "cells_per_s": round(n_train / sec, 1), "train_cells": n_train, "steps": int(recs[0]["step"])}


def _footprint(log_path: Path) -> str:
    """The 'training data on ...' line of a train log (bytes per cell in memory)."""
    for line in log_path.read_text().splitlines():
        if "training data" in line:
            return line.split("INFO", 1)[-1].strip()
    return ""


def summarise(rows: list[dict]) -> dict:
    """Growth exponents per stage and the memory bounds at the largest size."""
    stages = [s for s in ROW_STAGES if any(r["stage"] == s for r in rows)]  # pipeline order, whatever the rows'
    top = max(r["cells"] for r in rows)
    exps, local, bounds = {}, {}, {}
    for s in stages:
        rs = sorted((r for r in rows if r["stage"] == s), key=lambda r: r["cells"])
        exps[s] = growth_exponent([r["cells"] for r in rs], [r["seconds"] for r in rs])
        local[s] = growth_exponent([r["cells"] for r in rs[-2:]], [r["seconds"] for r in rs[-2:]])
        last = [r for r in rs if r["cells"] == top and r["peak_rss_mb"] is not None]
        if last:
            limit = TRAIN_MAX_MB if s in TRAIN_STAGES else NON_TRAIN_MAX_MB
            bounds[s] = {"peak_rss_mb": last[0]["peak_rss_mb"], "limit_mb": limit,
                         "pass": last[0]["peak_rss_mb"] < limit}
    return {"growth_exponent": exps, "growth_exponent_largest_two": local,
            "exponent_pass": {s: (e is not None and e <= MAX_EXPONENT) for s, e in exps.items()},
            "memory_at_largest": bounds, "largest": top}


def _fmt(exponent: float | None) -> str:
    return "–" if exponent is None else f"{exponent:.2f}"


def markdown(result: dict) -> str:
    """The README table: seconds (cells/s) and peak RSS per stage and size, the growth exponent and the bounds."""
    sizes = result["settings"]["sizes"]
    head = ("| stage | " + " | ".join(f"{n:,} cells: s (cells/s), peak MB" for n in sizes)
            + " | exponent | exponent, largest two |")
    lines = [head, "|" + "---|" * (len(sizes) + 3)]
    local = result.get("growth_exponent_largest_two", {})
    for stage, exp in result["growth_exponent"].items():
        cells = []
        for n in sizes:
            r = next((r for r in result["rows"] if r["stage"] == stage and r["cells"] == n), None)
            rss = "" if r is None or r["peak_rss_mb"] is None else f", {r['peak_rss_mb']:,.0f}"
            cells.append("–" if r is None else f"{r['seconds']:,.0f} ({r['cells_per_s']:,.0f}){rss}")
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {_fmt(exp)} | {_fmt(local.get(stage))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--base-cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--proteins", type=int, default=100)
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps of the train_steps stage")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/omicsclip_scale"))
    ap.add_argument("--base", type=Path, default=None, help="an existing base .h5ad (same generator settings)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    ap.add_argument("--small", action="store_true", help="tiny sizes (the script's test)")
    ap.add_argument("--append", action="store_true", help="keep the rows of other sizes already in --out")
    ap.add_argument("--keep", action="store_true", help="keep each size's store, model, index and outputs")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                      help="rerun only these stages on the outputs of an earlier --keep run (implies --append, --keep)")
    mode.add_argument("--prepare-only", action="store_true", help="only write the sizes' input files")
    mode.add_argument("--report-only", action="store_true",
                      help="only recompute the summary and table of an existing --out from its rows")
    a = ap.parse_args(argv)
    extra: dict[str, list[str]] = {}
    if a.small:  # every stage and the summary, in minutes: tiny data, light training and heads
        a.sizes, a.base_cells, a.genes, a.proteins, a.steps = [1000, 2000], 1000, 200, 12, 3
        light = ["preprocess.n_hvg=100", "model.members=1", "train.batch_size=128"]
        extra = {"train_steps": light, "train": light,
                 "finetune": ["finetune.epochs=20", "finetune.ensemble=2", "finetune.mc_samples=2"]}
    if a.report_only:  # the summary and table of an existing result, from its rows
        result = _read_result(a.out)
        result.update(summarise(result["rows"]))
        _write_result(a.out, result)
        print(markdown(result))
        return result
    env = {**os.environ, "OMICSCLIP_PROGRESS_SECONDS": "60"}
    rows: list[dict] = []
    if a.stages:  # checked before anything is drawn: a rerun needs no base data
        unknown = sorted(set(a.stages) - set(STAGES))
        if unknown:
            sys.exit(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        missing = [n for n in a.sizes
                   if not (a.workdir / f"n{n}").is_dir() or not (a.workdir / f"cells_{n}.h5ad").is_file()]
        if missing:
            sys.exit(f"--stages needs the outputs of an earlier --keep run under {a.workdir}; none for "
                     f"{', '.join(map(str, missing))} cells")
        a.append = a.keep = True
    a.workdir.mkdir(parents=True, exist_ok=True)
    base = None if a.stages else a.base or make_base(a.workdir / f"base_{a.base_cells}x{a.genes}.h5ad",
                                                     a.base_cells, a.genes, a.proteins, a.seed)
    notes: dict = {}
    if a.append and a.out.exists():  # keep the other sizes of an earlier run (one size at a time on a busy machine)
        earlier = _read_result(a.out)
        rows = [r for r in earlier["rows"]
                if r["cells"] not in a.sizes or (a.stages and _stage_of(r) not in a.stages)]
        notes = {k: v for k, v in earlier.items() if k.endswith("_note")}  # what was written about those rows
    t0 = time.perf_counter()
    if a.prepare_only:  # build the sizes' .h5ad files ahead (disk and IO only, nothing timed)
        for n in sorted(a.sizes):
            replicate(base, a.workdir / f"cells_{n}.h5ad", n, a.seed)
        return {}
    for n in sorted(a.sizes):
        rows.extend(run_size(n, base, a.workdir, a.steps, env, a.seed, extra, keep=a.keep, only=a.stages))
        if not a.keep:
            (a.workdir / f"cells_{n}.h5ad").unlink(missing_ok=True)
        result = {
            "rows": rows, **summarise(rows),
            "settings": {"sizes": sorted({r["cells"] for r in rows}), "base_cells": a.base_cells,
                         "genes": a.genes, "proteins": a.proteins, "batches": 4, "types": 12, "steps": a.steps,
                         "keep": KEEP, "seed": a.seed, "config": "default (train.epochs=1)"},
            "machine": {"cpu": platform.machine(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
            "wall_seconds_this_run": round(time.perf_counter() - t0, 1), **notes,
        }
        _write_result(a.out, result)  # after every size: a long run keeps what it did
    print(f"\n{'stage':<12} exponent  peak RSS at {result['largest']:,} cells")
    for s, e in result["growth_exponent"].items():
        mem = result["memory_at_largest"].get(s)
        exp = "-" if e is None else f"{e:.2f}"
        peak = "" if mem is None else f"{mem['peak_rss_mb']:.0f} MB (limit {mem['limit_mb']})"
        print(f"{s:<12} {exp:>8}  {peak}")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
