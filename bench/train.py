"""Training speed on this CPU: omicsclip vs scvi-tools' totalVI, same data, same epochs, same thread count.

omicsclip runs in this process (``omicsclip.train.run.train_model`` with the default config, early stopping off);
totalVI runs in a subprocess of a throwaway venv (scvi-tools is never a project dependency) through a small
driver script that this bench writes to a temporary file. Both train on the same training cells (the model's
split) of the same data for the same number of epochs; each uses its own default batch size and model.

Reported: cells/s per epoch (training cells / median epoch seconds, first epoch excluded as warm-up) and
end-to-end cells/s (training cells × epochs / wall time of the whole train call, setup included), plus the
ratio omicsclip / totalVI. ``--repeat`` (default 3) times the pair that many times, back to back: the result
is the run with the median (for an even count, the lower middle) per-epoch ratio, with every run's ratio beside
it. On a busy machine wall time depends on what else runs while each tool trains, so the same per-epoch rate is
also given in process CPU time (``cells_per_cpu_s_epoch``, validation excluded)
with its ratio ``ratio_cells_per_cpu_s_epoch``. omicsclip's epoch leaves out the last partial batch (another one
each epoch) while totalVI's covers every cell, so ``ratio_cells_processed_per_s_epoch`` also compares the cells
the steps actually saw (full batches only, for omicsclip).

Set up the venv once (torch pinned so pip takes the local CPU build, not a multi-GB CUDA one)::

    python3 -m venv /tmp/scvi-venv && /tmp/scvi-venv/bin/pip install torch==2.13.0 scvi-tools

Run::

    .venv/bin/python bench/train.py [--data pbmc10k_protein_v3 | --synthetic 5000] [--epochs 10] [--threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"

TOTALVI_DRIVER = r'''
import json, statistics, sys, time
import anndata as ad
import numpy as np
import torch

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
import scvi
from lightning.pytorch.callbacks import Callback

scvi.settings.seed = args["seed"]
a = ad.read_h5ad(args["h5ad"])
keep = a.obs_names.isin(args["train_barcodes"])
if keep.sum() != len(args["train_barcodes"]):
    sys.exit(f"only {keep.sum()} of {len(args['train_barcodes'])} training barcodes found in {args['h5ad']}")
a = a[keep].copy()  # exactly omicsclip's training cells
a.obsm["protein_expression"] = np.asarray(a.obsm["protein"], dtype=np.float32)


class EpochTimer(Callback):
    def __init__(self):
        self.seconds = []

        self.cpu_seconds = []

    def on_train_epoch_start(self, trainer, module):
        self._t, self._c = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, module):
        self.seconds.append(time.perf_counter() - self._t)
        self.cpu_seconds.append(time.process_time() - self._c)


scvi.model.TOTALVI.setup_anndata(a, protein_expression_obsm_key="protein_expression")
model = scvi.model.TOTALVI(a)
timer = EpochTimer()
t0 = time.perf_counter()
model.train(max_epochs=args["epochs"], train_size=1.0, early_stopping=False, accelerator="cpu", devices=1,
            callbacks=[timer], enable_progress_bar=False, limit_val_batches=0)
wall = time.perf_counter() - t0
print("RESULT " + json.dumps({
    "epoch_seconds": timer.seconds, "epoch_cpu_seconds": timer.cpu_seconds, "wall_seconds": wall, "n_train_cells": int(a.n_obs),
    "n_genes": int(a.n_vars), "n_proteins": int(a.obsm["protein_expression"].shape[1]),
    "batch_size": 256, "scvi_version": scvi.__version__, "torch_version": torch.__version__,
    "threads": torch.get_num_threads(),
}))
'''


def _rates(epoch_seconds: list[float], n_train: int, wall: float, epochs: int,
           epoch_cpu_seconds: list[float] | None = None) -> dict:
    import statistics

    steady = epoch_seconds[1:] or epoch_seconds
    med = statistics.median(steady)
    out = {
        "epochs_run": len(epoch_seconds),
        "median_epoch_seconds": med,
        "cells_per_s_epoch": n_train / med,
        "wall_seconds": wall,
        "cells_per_s_end_to_end": n_train * len(epoch_seconds) / wall,
        "epoch_seconds": epoch_seconds,
    }
    if epoch_cpu_seconds:
        cpu = statistics.median(epoch_cpu_seconds[1:] or epoch_cpu_seconds)
        out.update({"median_epoch_cpu_seconds": cpu, "cells_per_cpu_s_epoch": n_train / cpu,
                    "epoch_cpu_seconds": epoch_cpu_seconds})
    return out


class _EpochCpuClock:
    """Process CPU seconds of each training epoch (validation excluded), read at ``Trainer._end_epoch``.

    CPU time, unlike wall time, does not count the time other processes on a busy machine hold the cores.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start: float | None = None

    def __enter__(self) -> _EpochCpuClock:
        from omicsclip.train import trainer

        self._orig_fit, self._orig_end = trainer.Trainer.fit, trainer.Trainer._end_epoch
        clock = self

        def fit(tr):
            clock._start = time.process_time()
            return clock._orig_fit(tr)

        def end_epoch(tr, seconds):
            clock.seconds.append(time.process_time() - clock._start)
            rec = clock._orig_end(tr, seconds)
            clock._start = time.process_time()  # the next epoch starts after validation
            return rec

        trainer.Trainer.fit, trainer.Trainer._end_epoch = fit, end_epoch
        return self

    def __exit__(self, *exc) -> None:
        from omicsclip.train import trainer

        trainer.Trainer.fit, trainer.Trainer._end_epoch = self._orig_fit, self._orig_end


def _prepare_data(args, tmp: Path):
    """Return (h5ad path for totalVI, store path for omicsclip, description)."""
    from omicsclip.io.store import write_store

    if args.synthetic:
        from omicsclip.io.synthetic import make_synthetic, write_synthetic_h5ad

        h5ad = write_synthetic_h5ad(tmp / "synthetic.h5ad", n_cells=args.synthetic, seed=0)
        data = make_synthetic(n_cells=args.synthetic, seed=0)
        desc = f"synthetic ({args.synthetic} cells, 1000 genes, 20 proteins)"
    else:
        h5ad = SHARED / args.data / f"{args.data}.h5ad"
        if not h5ad.exists():
            sys.exit(f"bench/train.py: {h5ad} not found")
        data = None
        desc = args.data
    store = tmp / "store.zarr"
    if data is not None:
        write_store(data, store)
    else:
        from omicsclip.io.ingest import ingest

        ingest([h5ad], store, fmt="h5ad", make_unique=True, progress=False)
    return h5ad, store, desc


def run_omicsclip(store: Path, out: Path, epochs: int, seed: int, threads: int) -> tuple[dict, list[str]]:
    import torch

    from omicsclip.config import load_config
    from omicsclip.io.store import store_info
    from omicsclip.train.run import train_model

    torch.set_num_threads(threads)
    # patience = epochs: early stopping must not cut the run short, so both tools train the same epochs
    cfg = load_config(None, [f"train.epochs={epochs}", f"train.seed={seed}", f"train.patience={epochs}",
                             f"train.num_threads={threads}", "train.device=cpu"])
    t0 = time.perf_counter()
    with _EpochCpuClock() as clock:
        train_model(store, out, cfg)
    wall = time.perf_counter() - t0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    split = _read_split(out / "split.tsv")
    barcodes = store_info(store)["obs"].index.astype(str)
    train = [str(b) for b in barcodes[split.reindex(barcodes).to_numpy() == "train"]]
    res = _rates([float(r["seconds"]) for r in log], len(train), wall, epochs, clock.seconds)
    batch = int(cfg["train"]["batch_size"])
    # an epoch drops the last partial batch (a different one every epoch): the cells a step actually sees
    processed = len(train) // batch * batch
    res.update({"batch_size": batch, "threads": torch.get_num_threads(),
                "n_train_cells": len(train), "cells_per_epoch_processed": processed,
                "cells_processed_per_s_epoch": processed / res["median_epoch_seconds"],
                "note": "epoch seconds from train_log.jsonl"})
    return res, train


def _read_split(path: Path):
    from omicsclip.io.split import read_split

    return read_split(path)


def run_totalvi(python: Path, h5ad: Path, train_barcodes: list[str], epochs: int, seed: int, threads: int,
                tmp: Path) -> dict:
    if not python.exists():
        return {"error": f"{python} not found; create the venv: python3 -m venv /tmp/scvi-venv && "
                         "/tmp/scvi-venv/bin/pip install torch==2.13.0 scvi-tools"}
    driver = tmp / "totalvi_driver.py"
    driver.write_text(TOTALVI_DRIVER)
    arg = json.dumps({"h5ad": str(h5ad), "epochs": epochs, "seed": seed, "threads": threads,
                      "train_barcodes": train_barcodes})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    p = subprocess.run([str(python), str(driver), arg], capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"error": f"totalVI driver failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}"}
    raw = json.loads(lines[-1][len("RESULT "):])
    res = _rates(raw.pop("epoch_seconds"), raw["n_train_cells"], raw.pop("wall_seconds"), epochs,
                 raw.pop("epoch_cpu_seconds"))
    res.update(raw)
    return res


def _run_pair(args: argparse.Namespace, h5ad: Path, store: Path, tmp: Path) -> dict:
    """One timed omicsclip run and one totalVI run on the same training cells; their numbers and ratios."""
    tmp.mkdir(parents=True, exist_ok=True)
    om, train_barcodes = run_omicsclip(store, tmp / "model", args.epochs, args.seed, args.threads)
    print(f"omicsclip: {om['cells_per_s_epoch']:.0f} cells/s per epoch "
          f"({om['median_epoch_seconds']:.2f} s/epoch, {om['n_train_cells']} training cells)", flush=True)
    tv = run_totalvi(args.scvi_python, h5ad, train_barcodes, args.epochs, args.seed, args.threads, tmp)
    run = {"omicsclip": om, "totalvi": tv}
    if "error" in tv:
        print(f"totalVI: {tv['error']}")
        return run
    print(f"totalVI:   {tv['cells_per_s_epoch']:.0f} cells/s per epoch "
          f"({tv['median_epoch_seconds']:.2f} s/epoch, {tv['n_train_cells']} training cells)")
    run["ratio_cells_per_s_epoch"] = om["cells_per_s_epoch"] / tv["cells_per_s_epoch"]
    run["ratio_cells_per_s_end_to_end"] = om["cells_per_s_end_to_end"] / tv["cells_per_s_end_to_end"]
    run["ratio_cells_per_cpu_s_epoch"] = om["cells_per_cpu_s_epoch"] / tv["cells_per_cpu_s_epoch"]
    # totalVI's epoch sees every training cell (its last batch is partial, not dropped)
    run["ratio_cells_processed_per_s_epoch"] = om["cells_processed_per_s_epoch"] / tv["cells_per_s_epoch"]
    print(f"ratio omicsclip/totalVI: {run['ratio_cells_per_s_epoch']:.2f}x per epoch, "
          f"{run['ratio_cells_per_s_end_to_end']:.2f}x end to end, "
          f"{run['ratio_cells_per_cpu_s_epoch']:.2f}x per epoch in CPU time, "
          f"{run['ratio_cells_processed_per_s_epoch']:.2f}x in cells a step saw", flush=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="pbmc10k_protein_v3", help="folder name under the shared data")
    ap.add_argument("--synthetic", type=int, default=0, help="use N synthetic cells instead of --data")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scvi-python", type=Path, default=Path("/tmp/scvi-venv/bin/python"))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of both tools; the median ratio is reported")
    ap.add_argument("--out", type=Path, default=RESULTS / "train.json")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    runs = []
    with tempfile.TemporaryDirectory(prefix="omicsclip-bench-train-") as d:
        tmp = Path(d)
        h5ad, store, desc = _prepare_data(args, tmp)
        print(f"data: {desc}; {args.epochs} epochs; {args.threads} thread(s); {args.repeat} run(s)", flush=True)
        for i in range(args.repeat):  # each run times both tools back to back, so load hits the pair alike
            runs.append(_run_pair(args, h5ad, store, tmp / f"run{i}"))
    result = {
        "data": desc, "epochs": args.epochs, "threads": args.threads, "seed": args.seed,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "repeat": args.repeat,
    }
    ok = [r for r in runs if "ratio_cells_per_s_epoch" in r]
    if ok:  # the run with the median per-epoch ratio stands for all; every run's ratio is kept
        ratios = [r["ratio_cells_per_s_epoch"] for r in ok]
        result.update(sorted(ok, key=lambda r: r["ratio_cells_per_s_epoch"])[(len(ok) - 1) // 2])
        result["ratio_cells_per_s_epoch_runs"] = ratios
        result["ratio_cells_per_s_epoch_median"] = statistics.median(ratios)
        result["ratio_cells_processed_per_s_epoch_runs"] = [r["ratio_cells_processed_per_s_epoch"] for r in ok]
        if len(ok) > 1:
            print(f"per-epoch ratio over {len(ok)} runs: median {statistics.median(ratios):.2f}x "
                  f"(runs: {', '.join(f'{x:.2f}' for x in ratios)})")
    else:
        result.update(runs[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from omicsclip.io.atomic import atomic_path
    from omicsclip.io.jsonfile import write_json

    with atomic_path(args.out, overwrite=True) as tmp_out:
        write_json(tmp_out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
