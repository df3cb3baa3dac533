"""A reference pooled from several datasets against one model per dataset, and ``train.batch_key`` on and off.

Ingests the shared CITE-seq datasets (pbmc10k, bremsc, 5' PBMC), trains one model per dataset on its own store,
pools the stores (``omicsclip pool``: the union of the genes, each dataset's unmeasured genes masked, or with
``--pool-genes shared`` the genes all share; the union panel) and trains pooled models with and without
``train.batch_key=dataset``. Every model is scored with ``omicsclip evaluate`` on each dataset's own held-out
test cells (pooled models: ``--dataset``, the dataset's own panel). Validation FOSCTTM (validation cells, never
test cells) is what chooses the ``batch_key`` default; test numbers are reported next to it.

Run::

    .venv/bin/python bench/pooled.py [--set train.epochs=40 ...] [--out bench/results/pooled.json]

``--train-seeds 0,1,2,3,4`` trains every model at each training seed on one split and reports how far the
pooled/per-dataset ratio moves with the training seed alone (and the per-dataset model against itself).
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

import numpy as np

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


def train_and_score(stores: dict[str, Path], pooled: Path, args: argparse.Namespace, sets: list[str], tag: str,
                    seed: int | None, work: Path, log: Path) -> dict[str, dict]:
    """Train (or reuse) every per-dataset and pooled model at one training seed and score each dataset's test cells.

    ``seed``: ``train.seed`` for every model (``None``: as ``--set`` says); the split is the same at every seed.
    """
    sfx = "" if seed is None else f"_t{seed}"
    sets = sets + ([] if seed is None else ["--set", f"train.seed={seed}"])
    rows: dict[str, dict] = {}
    for name, store in stores.items():  # one model per dataset
        model = work / f"model_{name}{sfx}"
        if not model.exists():
            run("train", str(store), "--out", str(model), *sets, log=log)
        out = work / f"m_{name}{sfx}.json"
        run("evaluate", str(store), "--model", str(model), "--out", str(out), "--overwrite", log=log)
        rows[f"{name}/own"] = {"model": "own", "dataset": name, "train_seed": seed, **metrics(out)}
    extras = {"pooled": ["--set", "train.batch_key="], "pooled_batch_key": ["--set", "train.batch_key=dataset"],
              "pooled_default": []}
    for variant in args.variants:
        model = work / f"model_{variant}{tag}{sfx}"
        if not model.exists():
            run("train", str(pooled), "--out", str(model), *sets, *extras[variant], log=log)
        for name in stores:
            out = work / f"m_{variant}{tag}_{name}{sfx}.json"
            run("evaluate", str(pooled), "--model", str(model), "--out", str(out), "--dataset", name, "--overwrite",
                log=log)
            rows[f"{name}/{variant}"] = {"model": variant, "dataset": name, "train_seed": seed, **metrics(out)}
    for name in stores:
        own = rows[f"{name}/own"]["test_foscttm"]
        for variant in args.variants:
            r = rows[f"{name}/{variant}"]
            r["test_foscttm_ratio_to_own"] = r["test_foscttm"] / own if own else None
    return rows


def seed_summary(per_seed: dict[int, dict[str, dict]], names: list[str], variants: list[str]) -> dict:
    """Across training seeds (one split): each dataset's own and pooled test FOSCTTM, their per-seed ratios, the
    ratio of their means, and how far the per-dataset model moves against itself (its seed-k FOSCTTM over its
    first seed's): the noise a one-seed ratio carries."""
    seeds = sorted(per_seed)
    out: dict[str, dict] = {}
    for name in names:
        own = np.array([per_seed[s][f"{name}/own"]["test_foscttm"] for s in seeds])
        entry = {"own_test_foscttm": own.tolist(), "own_vs_own_first_seed": (own / own[0]).tolist()}
        for v in variants:
            pooled = np.array([per_seed[s][f"{name}/{v}"]["test_foscttm"] for s in seeds])
            ratio = pooled / own
            entry[v] = {"test_foscttm": pooled.tolist(), "ratio_per_seed": ratio.tolist(),
                        "ratio_of_means": float(pooled.mean() / own.mean()), "ratio_min": float(ratio.min()),
                        "ratio_max": float(ratio.max()), "seeds_within_5pct": int((ratio <= 1.05).sum())}
        out[name] = entry
    return {"train_seeds": seeds, "datasets": out}


def seed_table(summary: dict, variants: list[str]) -> list[str]:
    """Markdown rows of :func:`seed_summary`."""
    lines = ["| dataset | model | test FOSCTTM per training seed | ratio to own per seed | ratio of means |",
             "|---|---|---|---|---|"]
    for name, e in summary["datasets"].items():
        lines.append(f"| {name} | own | {' / '.join(f'{x:.4f}' for x in e['own_test_foscttm'])} | "
                     f"own vs its first seed: {' / '.join(f'{x:.3f}' for x in e['own_vs_own_first_seed'])} | |")
        for v in variants:
            lines.append(f"| {name} | {v} | {' / '.join(f'{x:.4f}' for x in e[v]['test_foscttm'])} | "
                         f"{' / '.join(f'{x:.3f}' for x in e[v]['ratio_per_seed'])} | {e[v]['ratio_of_means']:.3f} |")
    return lines


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
    ap.add_argument("--train-seeds", default="",
                    help="comma-separated train.seed values: every model is trained at each, on the same split "
                         "(split.seed as --set says), and the ratios' spread across them is reported")
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.train_seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--train-seeds {args.train_seeds!r}: not comma-separated integers") from None
    if any(s.startswith("train.seed=") for s in args.sets) and seeds:
        raise SystemExit("--train-seeds and --set train.seed=... both set the training seed: give one")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="omicsclip-pooled-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    sets = [x for s in args.sets for x in ("--set", s)]
    t0 = time.time()
    stores = {name: work / f"{name}.zarr" for name in args.datasets}
    inputs = {name: next((SHARED / DATASETS[name]).glob("*.h5ad"), None) for name in stores
              if not stores[name].exists()}
    missing = [str(SHARED / DATASETS[name]) for name, h5ad in inputs.items() if h5ad is None]
    if missing:  # all checked before the first ingest
        raise SystemExit(f"bench/pooled.py: no .h5ad in {', '.join(missing)} (set OMICSCLIP_SHARED_DATA, or give a "
                         f"--workdir holding NAME.zarr)")
    for name, h5ad in inputs.items():
        run("ingest", str(h5ad), "--out", str(stores[name]), "--make-unique", log=log)
    tag = ("" if len(args.datasets) == len(DATASETS) else "_" + "_".join(args.datasets)) + (
        "" if args.pool_genes == "shared" else f"_{args.pool_genes}")
    pooled = work / f"pooled{tag}.zarr"
    if not pooled.exists():
        run("pool", *map(str, stores.values()), "--out", str(pooled), "--names", ",".join(stores),
            "--genes", args.pool_genes, log=log)
    per_seed = {s: train_and_score(stores, pooled, args, sets, tag, s, work, log) for s in seeds or [None]}
    rows = {f"{k}/{s}" if seeds else k: r for s, rs in per_seed.items() for k, r in rs.items()}
    first = next(iter(per_seed.values()))
    val = {v: sum(first[f"{n}/{v}"]["val_foscttm"] for n in stores) / len(stores) for v in args.variants}
    result = {"settings": args.sets, "datasets": args.datasets, "pool_genes": args.pool_genes,
              "rows": list(rows.values()), "mean_val_foscttm": val,
              "batch_key_chosen_on_validation": min(val, key=val.get), "seconds": round(time.time() - t0, 1)}
    lines = ["| dataset | model | train seed | test FOSCTTM | ratio to own | val FOSCTTM | protein Pearson |",
             "|---|---|---|---|---|---|---|"]
    for r in rows.values():
        ratio = r.get("test_foscttm_ratio_to_own")
        lines.append(f"| {r['dataset']} | {r['model']} | {'' if r['train_seed'] is None else r['train_seed']} | "
                     f"{r['test_foscttm']:.4f} | {'' if ratio is None else f'{ratio:.3f}'} | "
                     f"{r['val_foscttm']:.4f} | {r['test_protein_pearson']:.3f} |")
    lines.append(f"\nmean validation FOSCTTM{' (first training seed)' if seeds else ''}: {val}; "
                 f"chosen: {result['batch_key_chosen_on_validation']}")
    if len(seeds) > 1:
        result["train_seed_spread"] = seed_summary(per_seed, list(stores), args.variants)
        lines += ["", *seed_table(result["train_seed_spread"], args.variants)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = "\n".join(lines)
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
