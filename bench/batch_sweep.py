"""Batch size x temperature x learning-rate scaling on real CITE-seq data, chosen on VALIDATION cells.

Why: the GPU atlas config (``configs/atlas_gpu.yaml``) trains with a global batch of 16k-64k cells. Its
temperature, learning-rate rule and warm-up should come from data, not be guessed. On CPU the largest batch that
the shared datasets allow is measured here: pbmc10k (6,855 cells, 4,798 training cells) with batches 256 -> 4,096
and bremsc (1,372 cells, ~960 training cells) with batches 128 -> 768 (a larger batch does not fit its training
set).

Protocol (one seed = one split per run of the script; every number selected on validation cells):

- Budget: the same number of optimiser steps for every batch size (``train.epochs=1`` with ``train.min_steps=S``,
  so a run lasts ``ceil(S / steps_per_epoch)`` epochs and the cosine schedule ends at about S steps; S = 150 by
  default, what a 4,096 batch affords on a shared 2-core CPU: ~2.4 s a step). A budget in
  epochs would give a 4,096 batch one step per epoch on pbmc10k and confound batch size with the number of
  updates; at atlas scale steps are plentiful (1M cells / 32,768 = 30 steps per epoch, as many as 256 on
  pbmc10k's 4,798 training cells), so the question the atlas needs answered is what a step at a larger batch
  buys and which temperature and learning rate it needs, not how few steps survive.
- Early stopping off (``train.patience`` larger than the run), so every run gets its full budget; the kept model
  is the best validation epoch (what training keeps anyway), and the reported validation numbers are that
  epoch's.
- Learning rate: the defaults' ``train.lr`` at the defaults' ``train.batch_size`` (the reference batch B0),
  scaled to batch B by a rule: ``sqrt`` (lr0 * sqrt(B/B0), the grid), ``linear`` (lr0 * B/B0) and ``constant``
  (lr0), the last two at ``RULE_BATCH`` (pbmc10k 1,024, bremsc 768: 4x and 3x B0; a 4,096 batch is too slow
  on CPU for more runs) and the temperature that won there on validation.
  Warm-up: ``--warmup`` steps at every batch (15, a tenth of the budget as the defaults' 100 steps are of a
  default run); the ``sqrt-warmup`` rule also scales it by sqrt(B/B0).
- ``model.members=1`` (a fifth of the CPU time; the members are independent encoder pairs with their own losses,
  so the batch/temperature/lr behaviour of one is that of each).
- Test FOSCTTM/recall@10 (held-out cells, ``omicsclip.evaluation.evaluate.evaluate``) are printed for
  information only; nothing is chosen on them.

Run (what made ``bench/results/batch_sweep*``: pbmc10k ~30 min and bremsc ~9 min per seed on a busy 2-core CPU,
the datasets side by side, each adding its rows to the JSON; then the choice over all seeds)::

    nice -n 10 .venv/bin/python bench/batch_sweep.py --datasets pbmc10k_protein_v3 &
    nice -n 10 .venv/bin/python bench/batch_sweep.py --datasets bremsc_inhouse_pbmc
    for s in 1 2; do nice -n 10 .venv/bin/python bench/batch_sweep.py --datasets bremsc_inhouse_pbmc --seed $s \
        --out bench/results/batch_sweep_bremsc_seed$s.json; done
    .venv/bin/python bench/batch_sweep.py --report-only \
        --include bench/results/batch_sweep_bremsc_seed1.json bench/results/batch_sweep_bremsc_seed2.json

It prints a table and writes ``bench/results/batch_sweep.json`` and ``bench/results/batch_sweep.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"

BATCHES = {"pbmc10k_protein_v3": [256, 1024, 4096], "bremsc_inhouse_pbmc": [128, 256, 768]}
RULE_BATCH = {"pbmc10k_protein_v3": 1024, "bremsc_inhouse_pbmc": 768}
RULES = ("sqrt", "linear", "constant", "sqrt-warmup")


def scaled(rule: str, batch: int, base_batch: int, base_lr: float, base_warmup: int) -> tuple[float, int]:
    """(lr, warmup_steps) for ``batch`` under a scaling ``rule`` from the reference (``base_batch``, ``base_lr``)."""
    r = batch / base_batch
    lr = {"sqrt": base_lr * math.sqrt(r), "sqrt-warmup": base_lr * math.sqrt(r), "linear": base_lr * r,
          "constant": base_lr}[rule]
    warmup = round(base_warmup * math.sqrt(r)) if rule == "sqrt-warmup" else base_warmup
    return lr, warmup


def run_one(store: Path, work: Path, *, batch: int, temperature: float, rule: str, steps: int, warmup: int,
            members: int, seed: int, threads: int, defaults: dict) -> dict:
    """Train one configuration; validation metrics at the best validation epoch, test metrics for information."""
    from omicsclip.config import load_config
    from omicsclip.evaluation.evaluate import evaluate
    from omicsclip.evaluation.selection import read_train_log
    from omicsclip.train.run import train_model

    tr = defaults["train"]
    lr, warmup = scaled(rule, batch, tr["batch_size"], tr["lr"], warmup)
    overrides = [f"train.batch_size={batch}", f"train.temperature={temperature}", f"train.lr={lr!r}",
                 f"train.warmup_steps={warmup}", "train.epochs=1", f"train.min_steps={steps}",
                 f"train.patience={steps + 1}", f"model.members={members}", f"train.seed={seed}",
                 f"split.seed={seed}", "train.device=cpu", f"train.num_threads={threads}"]
    cfg = load_config(None, overrides)
    model_dir = work / f"b{batch}_t{temperature}_{rule}"
    t0 = time.perf_counter()
    train_model(store, model_dir, cfg)
    seconds = time.perf_counter() - t0
    log = read_train_log(model_dir / "train_log.jsonl")
    evals = [r for r in log if r.get("val_foscttm") is not None]
    best = min(evals, key=lambda r: r["val_foscttm"])  # train.monitor=foscttm: the epoch training keeps
    ev = cfg["evaluate"]
    metrics = evaluate(store, model_dir, fewlabel_fraction=ev["fewlabel_fraction"], n_pcs=ev["n_pcs"],
                       label_key=ev["label_key"], impute_k=cfg["query"]["impute_k"],
                       impute_temperature=cfg["query"]["temperature"], impute_from=cfg["query"]["transfer_from"],
                       seed=seed)
    om = metrics["methods"]["omicsclip"]
    return {"batch_size": batch, "temperature": temperature, "rule": rule, "lr": lr, "warmup_steps": warmup,
            "steps": log[-1]["step"], "epochs": len(log), "best_epoch": best["epoch"], "best_step": best["step"],
            "val_foscttm": best["val_foscttm"], "val_recall_at_10": best["val_recall_at_10"],
            "val_recall_at_10_max": max(r["val_recall_at_10"] for r in evals),
            "test_foscttm": om["foscttm"], "test_recall_at_10": om["recall_at_10"],
            "train_seconds": round(seconds, 1), "overrides": overrides}


def choose(results: dict) -> dict:
    """The atlas choice from validation numbers only, over the datasets in ``results``.

    Temperature: the one whose validation FOSCTTM at each dataset's largest batch is closest to that batch's best
    (ratio to the best, averaged over the seeds of a dataset, then over datasets; the largest batches are the
    nearest to the atlas's). Learning-rate rule: the same ratios at ``RULE_BATCH``. Runs of other seeds appear
    as ``<dataset>@seed<N>`` (``--include``).
    """
    def ratios(rows: list[dict], key: str) -> dict:
        best = min(r["val_foscttm"] for r in rows)
        return {r[key]: r["val_foscttm"] / best for r in rows}

    t_ratio: dict[float, dict[str, list[float]]] = {}
    rule_ratio: dict[str, dict[str, list[float]]] = {}
    for name, rows in results["datasets"].items():
        dataset = name.split("@", 1)[0]
        largest = max(r["batch_size"] for r in rows)
        grid = [r for r in rows if r["batch_size"] == largest and r["rule"] == "sqrt"]
        for t, v in ratios(grid, "temperature").items():
            t_ratio.setdefault(t, {}).setdefault(dataset, []).append(v)
        rb = results["best_rule"].get(name)
        if rb:
            tried = [r for r in rows if r["batch_size"] == rb["batch_size"] and r["temperature"] == rb["temperature"]]
            for rule, v in ratios(tried, "rule").items():
                rule_ratio.setdefault(rule, {}).setdefault(dataset, []).append(v)
    n = len({name.split("@", 1)[0] for name in results["datasets"]})

    def mean(per: dict[str, list[float]]) -> float:
        return sum(sum(v) / len(v) for v in per.values()) / len(per)

    t_mean = {t: mean(v) for t, v in t_ratio.items() if len(v) == n}
    r_mean = {k: mean(v) for k, v in rule_ratio.items() if len(v) == n}
    return {"temperature": min(t_mean, key=t_mean.get) if t_mean else None,
            "temperature_mean_ratio_to_best": t_mean,
            "lr_rule": min(r_mean, key=r_mean.get) if r_mean else None, "lr_rule_mean_ratio_to_best": r_mean,
            "datasets": sorted(results["datasets"])}


def markdown(results: dict) -> str:
    lines = [f"# Batch size x temperature sweep (fixed budget {results['steps']} optimiser steps (whole epochs: up "
             f"to one epoch more), warm-up "
             f"{results['warmup_steps']} steps, members={results['members']}, seed {results['seed']}, CPU, 1 thread)",
             "", f"lr = {results['reference']['lr']} x rule(batch / {results['reference']['batch_size']}); "
             "sqrt: square root, linear: ratio, constant: 1; sqrt-warmup: sqrt lr and warm-up x sqrt(ratio).", "",
             "Chosen on validation; test columns for information only (held-out cells, never used to choose).", ""]
    if results.get("included"):
        lines += [f"Sections `<dataset>@seed<N>`: the same protocol with split and training seed N (from "
                  f"{', '.join(results['included'])}).", ""]
    for name, rows in results["datasets"].items():
        lines += [f"## {name}", "",
                  "| batch | T | lr rule | lr | warm-up | best step | val FOSCTTM ↓ | val recall@10 ↑ | "
                  "test FOSCTTM | test recall@10 | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['batch_size']} | {r['temperature']} | {r['rule']} | {r['lr']:.4g} | "
                         f"{r['warmup_steps']} | {r['best_step']} | {r['val_foscttm']:.4f} | "
                         f"{r['val_recall_at_10']:.3f} | {r['test_foscttm']:.4f} | {r['test_recall_at_10']:.3f} | "
                         f"{r['train_seconds']:.0f} |")
        lines.append("")
    lines += ["## Best temperature per batch (validation FOSCTTM, sqrt rule)", "",
              "| dataset | batch | best T | val FOSCTTM |", "|---|---|---|---|"]
    for name, per in results["best_temperature"].items():
        for b, (t, v) in per.items():
            lines.append(f"| {name} | {b} | {t} | {v:.4f} |")
    lines += ["", "## lr rule (validation FOSCTTM at the rule batch and its best temperature)", "",
              "| dataset | batch | T | " + " | ".join(RULES) + " | best |", "|---|---|---|" + "---|" * len(RULES) + "---|"]
    for name, r in results["best_rule"].items():
        cells = " | ".join(f"{r['val_foscttm'][k]:.4f}" if k in r["val_foscttm"] else "-" for k in RULES)
        lines.append(f"| {name} | {r['batch_size']} | {r['temperature']} | {cells} | {r['rule']} |")
    c = results.get("validation_winners")
    if c:
        lines += ["", "## Validation winners (`choose()` in bench/batch_sweep.py; docs/workflow.md explains the atlas choice)", "",
                  f"- temperature **{c['temperature']}**: mean ratio of validation FOSCTTM to the best temperature at "
                  "each dataset's largest batch: "
                  + ", ".join(f"T={t}: {v:.3f}" for t, v in sorted(c["temperature_mean_ratio_to_best"].items())),
                  f"- learning-rate rule **{c['lr_rule']}**: mean ratio to the best rule at the rule batch: "
                  + ", ".join(f"{k}: {v:.3f}" for k, v in sorted(c["lr_rule_mean_ratio_to_best"].items()))]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(BATCHES))
    ap.add_argument("--temperatures", default="0.05,0.1,0.2")
    ap.add_argument("--steps", type=int, default=150, help="optimiser steps per run (train.min_steps)")
    ap.add_argument("--warmup", type=int, default=15, help="warm-up steps at every batch (sqrt-warmup scales it)")
    ap.add_argument("--members", type=int, default=1, help="model.members (1 keeps the sweep affordable on CPU)")
    ap.add_argument("--rules", default="linear,constant,sqrt-warmup",
                    help="extra lr rules tried at RULE_BATCH and its best validation temperature")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "batch_sweep.json")
    ap.add_argument("--report-only", action="store_true", help="recompute the choice and the table from --out")
    ap.add_argument("--include", type=Path, nargs="*", default=[],
                    help="with --report-only: add the runs of these result files (other seeds) to the choice")
    args = ap.parse_args()
    if args.report_only:
        from omicsclip.io.jsonfile import write_json

        results = json.loads(args.out.read_text())
        for other in args.include:
            more = json.loads(other.read_text())
            tag = f"@seed{more['seed']}"
            for key in ("datasets", "best_temperature", "best_rule", "wall_seconds"):
                results[key].update({k.split("@", 1)[0] + tag: v for k, v in more[key].items()})
            name = str(other.resolve().relative_to(REPO) if other.resolve().is_relative_to(REPO) else other)
            if name not in results.setdefault("included", []):
                results["included"].append(name)
        results["validation_winners"] = choose(results)
        md = markdown(results)
        print(md)
        write_json(args.out, results)
        args.out.with_suffix(".md").write_text(md)
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from omicsclip.config import default_config
    from omicsclip.io.ingest import ingest

    torch.set_num_threads(args.threads)
    defaults = default_config()
    temps = [float(t) for t in args.temperatures.split(",")]
    extra = [r for r in args.rules.split(",") if r]
    unknown = sorted(set(extra) - set(RULES))
    if unknown:
        raise SystemExit(f"bench/batch_sweep.py: --rules: unknown {unknown}; choose from {RULES}")
    results: dict = {"steps": args.steps, "warmup_steps": args.warmup, "members": args.members, "seed": args.seed,
                     "threads": args.threads,
                     "reference": {"batch_size": defaults["train"]["batch_size"], "lr": defaults["train"]["lr"]},
                     "datasets": {}, "best_temperature": {}, "best_rule": {}, "wall_seconds": {}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="omicsclip-bench-batch-") as d:
        for name in args.datasets:
            h5ad = SHARED / name / f"{name}.h5ad"
            if not h5ad.exists():
                raise SystemExit(f"bench/batch_sweep.py: {h5ad} not found")
            store = ingest([h5ad], Path(d) / f"{name}.zarr", fmt="h5ad", make_unique=True, progress=False)
            rows = results["datasets"][name] = []
            (Path(d) / name).mkdir()

            def one(batch: int, t: float, rule: str, _store=store, _name=name, _rows=rows) -> dict:
                r = run_one(_store, Path(d) / _name, batch=batch, temperature=t, rule=rule, steps=args.steps,
                            warmup=args.warmup, members=args.members, seed=args.seed, threads=args.threads,
                            defaults=defaults)
                _rows.append(r)
                print(f"{_name} batch {batch:5d} T {t:<5} {rule:<11} lr {r['lr']:.4g} warm-up {r['warmup_steps']:3d}"
                      f" | val FOSCTTM {r['val_foscttm']:.4f} recall@10 {r['val_recall_at_10']:.3f} | test "
                      f"FOSCTTM {r['test_foscttm']:.4f} recall@10 {r['test_recall_at_10']:.3f} | "
                      f"{r['train_seconds']:.0f} s (elapsed {time.perf_counter() - t_start:.0f} s)", flush=True)
                return r

            best_t = results["best_temperature"][name] = {}
            for batch in BATCHES[name]:
                grid = [one(batch, t, "sqrt") for t in temps]
                win = min(grid, key=lambda r: r["val_foscttm"])
                best_t[batch] = (win["temperature"], win["val_foscttm"])
            rb = RULE_BATCH[name]
            t_rb = best_t[rb][0]
            tried = [r for r in rows if r["batch_size"] == rb and r["temperature"] == t_rb]
            tried += [one(rb, t_rb, rule) for rule in extra]
            win = min(tried, key=lambda r: r["val_foscttm"])
            results["best_rule"][name] = {"batch_size": rb, "temperature": t_rb, "rule": win["rule"],
                                          "val_foscttm": {r["rule"]: r["val_foscttm"] for r in tried}}
            results["wall_seconds"][name] = round(time.perf_counter() - t_start, 1)
    from omicsclip.io.jsonfile import write_json

    # datasets run in separate processes add their rows to one file (same protocol settings only)
    if args.out.exists():
        old = json.loads(args.out.read_text())
        same = all(old.get(k) == results[k] for k in ("steps", "warmup_steps", "members", "seed", "reference"))
        if same:
            for key in ("datasets", "best_temperature", "best_rule", "wall_seconds"):
                results[key] = {**{k: v for k, v in old[key].items() if k not in args.datasets}, **results[key]}
    results["validation_winners"] = choose(results)
    md = markdown(results)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
