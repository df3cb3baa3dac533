"""A reference pooled from several datasets against one model per dataset, and ``train.batch_key`` on and off.

Ingests the shared CITE-seq datasets (pbmc10k, bremsc, 5' PBMC), trains one model per dataset on its own store,
pools the stores (``omicsclip pool``: the union of the genes, each dataset's unmeasured genes masked, or with
``--pool-genes shared`` the genes all share; the union panel) and trains pooled models with and without
``train.batch_key=dataset``. Every model is scored with ``omicsclip evaluate`` on each dataset's own held-out
test cells (pooled models: ``--dataset``, the dataset's own panel). Validation FOSCTTM (validation cells, never
test cells) is what chooses the ``batch_key`` default; test numbers are reported next to it.

Run::

    .venv/bin/python bench/pooled.py [--set train.epochs=40 ...] [--out bench/results/pooled.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {"pbmc10k": "pbmc10k_protein_v3", "bremsc": "bremsc_inhouse_pbmc", "pbmc5p": "pbmc_5prime_totalseqc_10x"}
EXE = [sys.executable, "-m", "omicsclip.cli.main"]


def run(*args: str, log: Path) -> None:
    """Run an omicsclip command, its output appended to ``log``; raise with the log's tail on failure."""
    with open(log, "a") as fh:
        rc = subprocess.run([*EXE, *args], stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    if rc:
        raise SystemExit(f"omicsclip {' '.join(args)} failed ({rc}):\n" + "".join(log.read_text().splitlines(True)[-15:]))


def metrics(path: Path) -> dict:
    """Return the held-out and validation numbers of one metrics.json."""
    m = json.loads(path.read_text())
    om = m["methods"]["omicsclip"]
    return {"test_foscttm": om["foscttm"], "test_recall_at_10": om["recall_at_10"],
            "test_protein_pearson": om["protein_pearson"], "val_foscttm": m["validation"].get("foscttm"),
            "n_test_cells": m["n_test_cells"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every model")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pooled.json")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                    help="datasets to pool (default: all three)")
    ap.add_argument("--variants", nargs="+", default=["pooled", "pooled_batch_key"],
                    choices=["pooled", "pooled_batch_key", "pooled_default"],
                    help="pooled models: batch_key off, batch_key=dataset, or the default config")
    ap.add_argument("--pool-genes", choices=["union", "shared"], default="union",
                    help="the pooled store's genes (omicsclip pool --genes)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="omicsclip-pooled-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    sets = [x for s in args.sets for x in ("--set", s)]
    t0 = time.time()
    stores = {}
    for name in args.datasets:
        folder = DATASETS[name]
        h5ad = next((SHARED / folder).glob("*.h5ad"))
        stores[name] = work / f"{name}.zarr"
        if not stores[name].exists():
            run("ingest", str(h5ad), "--out", str(stores[name]), "--make-unique", log=log)
    rows: dict[str, dict] = {}
    for name, store in stores.items():  # one model per dataset
        model = work / f"model_{name}"
        if not model.exists():
            run("train", str(store), "--out", str(model), *sets, log=log)
        run("evaluate", str(store), "--model", str(model), "--out", str(work / f"m_{name}.json"), "--overwrite",
            log=log)
        rows[f"{name}/own"] = {"model": "own", "dataset": name, **metrics(work / f"m_{name}.json")}
    tag = ("" if len(args.datasets) == len(DATASETS) else "_" + "_".join(args.datasets)) + (
        "" if args.pool_genes == "shared" else f"_{args.pool_genes}")
    pooled = work / f"pooled{tag}.zarr"
    if not pooled.exists():
        run("pool", *map(str, stores.values()), "--out", str(pooled), "--names", ",".join(stores),
            "--genes", args.pool_genes, log=log)
    extras = {"pooled": ["--set", "train.batch_key="], "pooled_batch_key": ["--set", "train.batch_key=dataset"],
              "pooled_default": []}
    for variant in args.variants:
        extra = extras[variant]
        model = work / f"model_{variant}{tag}"
        if not model.exists():
            run("train", str(pooled), "--out", str(model), *sets, *extra, log=log)
        for name in stores:
            out = work / f"m_{variant}{tag}_{name}.json"
            run("evaluate", str(pooled), "--model", str(model), "--out", str(out), "--dataset", name, "--overwrite",
                log=log)
            rows[f"{name}/{variant}"] = {"model": variant, "dataset": name, **metrics(out)}
    for name in stores:
        own = rows[f"{name}/own"]["test_foscttm"]
        for variant in args.variants:
            r = rows[f"{name}/{variant}"]
            r["test_foscttm_ratio_to_own"] = r["test_foscttm"] / own if own else None
    val = {v: sum(rows[f"{n}/{v}"]["val_foscttm"] for n in stores) / len(stores) for v in args.variants}
    result = {"settings": args.sets, "datasets": args.datasets, "pool_genes": args.pool_genes, "rows": list(rows.values()), "mean_val_foscttm": val,
              "batch_key_chosen_on_validation": min(val, key=val.get), "seconds": round(time.time() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| dataset | model | test FOSCTTM | ratio to own | val FOSCTTM | protein Pearson |", "|---|---|---|---|---|---|"]
    for r in rows.values():
        ratio = r.get("test_foscttm_ratio_to_own")
        lines.append(f"| {r['dataset']} | {r['model']} | {r['test_foscttm']:.4f} | "
                     f"{'' if ratio is None else f'{ratio:.3f}'} | {r['val_foscttm']:.4f} | "
                     f"{r['test_protein_pearson']:.3f} |")
    lines.append(f"\nmean validation FOSCTTM: {val}; chosen: {result['batch_key_chosen_on_validation']}")
    md = "\n".join(lines)
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
