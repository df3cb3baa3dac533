"""Quality bar: omicsclip vs CCA, ridge and PCA on real CITE-seq data, with the project's targets checked.

For each dataset: ingest the shared ``.h5ad`` into a temporary store, train with the default config and a fixed
seed, run ``omicsclip.evaluation.evaluate.evaluate`` (held-out test cells; baselines fitted on the same training cells with
the same preprocessing), then print and write ``bench/results/quality.json`` and ``bench/results/quality.md``.

Targets (checked, never tuned here):

- FOSCTTM: omicsclip lower than the better of CCA and ridge by at least 30 % (pbmc10k) / 25 % (bremsc);
- recall@10: omicsclip higher than both CCA and ridge (both datasets);
- pbmc10k few-label accuracy (RNA embedding, 1 % of training cells labelled) above logistic regression on 50
  RNA PCs.

The defaults were chosen by a hyper-parameter search on the two target datasets (validation *and* test cells
were looked at), so their numbers are optimistic. The held-out datasets (``HELD_OUT``: never used while
tuning) are run with the same defaults and reported next to the baselines without targets: they are the
honest estimate of how the defaults carry over to new data.

Run::

    .venv/bin/python bench/quality.py [--datasets pbmc10k_protein_v3 bremsc_inhouse_pbmc] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"

FOSCTTM_MARGIN = {"pbmc10k_protein_v3": 0.30, "bremsc_inhouse_pbmc": 0.25}
FEWLABEL_TARGET = {"pbmc10k_protein_v3"}
HELD_OUT = ("pbmc_5prime_totalseqc_10x",)  # never used to choose the defaults
SHOWN = ("foscttm", "recall_at_10", "fewlabel_accuracy")


def targets(name: str, methods: dict[str, dict]) -> dict[str, dict]:
    """Check the quality targets of one dataset from its ``metrics.json`` methods.

    A held-out dataset has no margin target: its FOSCTTM row only asks for omicsclip below the better baseline.
    """
    om, cca, ridge, pca = (methods[m] for m in ("omicsclip", "cca", "ridge", "pca"))
    out: dict[str, dict] = {}
    best_fos = min(cca["foscttm"], ridge["foscttm"])
    margin = FOSCTTM_MARGIN.get(name, 0.0)
    out["foscttm"] = {
        "target": f"omicsclip <= {1 - margin:.2f} x min(CCA, ridge)",
        "omicsclip": om["foscttm"], "threshold": (1 - margin) * best_fos,
        "reduction_vs_best_baseline": 1 - om["foscttm"] / best_fos if best_fos > 0 else None,
        "holds": om["foscttm"] <= (1 - margin) * best_fos,
    }
    best_rec = max(cca["recall_at_10"], ridge["recall_at_10"])
    out["recall_at_10"] = {"target": "omicsclip > max(CCA, ridge)", "omicsclip": om["recall_at_10"],
                           "threshold": best_rec, "holds": om["recall_at_10"] > best_rec}
    if name in FEWLABEL_TARGET:
        ok = om["fewlabel_accuracy"] is not None and pca["fewlabel_accuracy"] is not None
        out["fewlabel_accuracy"] = {
            "target": "omicsclip RNA embedding > logistic regression on 50 RNA PCs",
            "omicsclip": om["fewlabel_accuracy"], "threshold": pca["fewlabel_accuracy"],
            "holds": bool(ok and om["fewlabel_accuracy"] > pca["fewlabel_accuracy"]),
        }
    return out


def feature_matched_baselines(store: Path, model_dir: Path, n_pcs: int, seed: int) -> dict[str, dict] | None:
    """Diagnostic, not a target: CCA and ridge given the model's extra RNA input too (their ``n_pcs`` PCs plus the
    scaled values of the model's protein genes, ``preprocess.protein_genes``), on the same cells. Shows how much
    of omicsclip's margin the feature choice alone would give the linear baselines. ``None`` without such genes."""
    import numpy as np

    from omicsclip.evaluation import metrics as M
    from omicsclip.evaluation.baselines import CCABaseline, RidgeBaseline
    from omicsclip.evaluation.evaluate import _align_split, _prot_clr, baseline_pcs, scaled_gene_rows
    from omicsclip.io.store import read_store
    from omicsclip.model.modelio import load_model

    model = load_model(model_dir)
    genes = model.state.protein_genes or []
    if not genes:
        return None
    data = read_store(store)
    split = _align_split(data.obs, model.split, store)
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    rows = scaled_gene_rows(model, data.rna, data.gene_names)
    pcs, _ = baseline_pcs(rows, data.n_cells, tr, n_pcs, seed)
    cols = [model.state.genes.index(g) for g in genes]
    chunks = [rows(np.arange(i, min(i + 8192, data.n_cells)))[:, cols] for i in range(0, data.n_cells, 8192)]
    x = np.hstack([pcs, np.vstack(chunks)])
    y, _ = _prot_clr(model, data)
    out = {}
    for name, base in (("cca", CCABaseline()), ("ridge", RidgeBaseline())):
        base.fit(x[tr], y[tr])
        a, b = base.transform(x[te], y[te]) if name == "cca" else base.match_space(x[te], y[te])
        r = M.retrieval_metrics(a, b, labels=None, temperature=0.05)
        out[name] = {"foscttm": r["foscttm"], "recall_at_10": r["recall_at_10"], "n_inputs": int(x.shape[1])}
    return out


def run_dataset(name: str, seed: int, threads: int, tmp: Path, overrides: list[str]) -> dict:
    """Ingest, train (defaults + ``overrides``), evaluate one shared dataset; metrics, targets and timings."""
    import torch

    from omicsclip.config import load_config
    from omicsclip.evaluation.evaluate import evaluate
    from omicsclip.io.ingest import ingest
    from omicsclip.train.run import train_model

    h5ad = SHARED / name / f"{name}.h5ad"
    if not h5ad.exists():
        raise SystemExit(f"bench/quality.py: {h5ad} not found")
    torch.set_num_threads(threads)
    cfg = load_config(None, [f"train.seed={seed}", f"split.seed={seed}", "train.device=cpu", *overrides])
    # bremsc has duplicate gene symbols: suffix them (-1, -2, ...) as `omicsclip ingest --make-unique` does
    store = ingest([h5ad], tmp / f"{name}.zarr", fmt="h5ad", make_unique=True, progress=False)
    t0 = time.perf_counter()
    model_dir = train_model(store, tmp / f"{name}.model", cfg)
    train_s = time.perf_counter() - t0
    epochs = sum(1 for line in (model_dir / "train_log.jsonl").read_text().splitlines() if line.strip())
    t0 = time.perf_counter()
    ev = cfg["evaluate"]
    metrics = evaluate(store, model_dir, fewlabel_fraction=ev["fewlabel_fraction"], n_pcs=ev["n_pcs"],
                       label_key=ev["label_key"], impute_k=cfg["query"]["impute_k"],
                       impute_temperature=cfg["query"]["temperature"], impute_from=cfg["query"]["transfer_from"],
                       seed=seed)
    eval_s = time.perf_counter() - t0
    metrics["store"] = name
    matched = feature_matched_baselines(store, model_dir, ev["n_pcs"], seed)
    return {"metrics": metrics, "targets": targets(name, metrics["methods"]), "feature_matched_baselines": matched,
            "train_seconds": train_s, "epochs_trained": epochs, "evaluate_seconds": eval_s,
            "config_overrides": overrides, "held_out_from_tuning": name in HELD_OUT}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown(results: dict[str, dict], seed: int) -> str:
    lines = [f"# omicsclip quality bar (default config, seed {seed}, held-out test cells)", ""]
    for name, r in results.items():
        m = r["metrics"]["methods"]
        kind = "held out from tuning, no targets" if r["held_out_from_tuning"] else "defaults tuned on it"
        lines += [f"## {name} ({kind}; {r['metrics']['n_test_cells']} test cells, {r['epochs_trained']} epochs, "
                  f"{r['train_seconds']:.0f} s training)", "",
                  "| method | FOSCTTM ↓ | recall@10 ↑ | few-label acc. ↑ | match score ↑ | protein Pearson ↑ |",
                  "|---|---|---|---|---|---|"]
        for meth in ("omicsclip", "cca", "ridge", "pca"):
            row = m[meth]
            lines.append(f"| {meth} | {_fmt(row['foscttm'])} | {_fmt(row['recall_at_10'])} | "
                         f"{_fmt(row['fewlabel_accuracy'])} | {_fmt(row['match_score'])} | "
                         f"{_fmt(row['protein_pearson'])} |")
        fm = r.get("feature_matched_baselines")
        if fm:
            n_in = fm["ridge"]["n_inputs"]
            lines += ["", f"Diagnostic, not a target: the baselines given omicsclip's extra RNA input too ({n_in} "
                      "inputs: their PCs plus the model's protein genes):", "",
                      "| method | FOSCTTM ↓ | recall@10 ↑ |", "|---|---|---|"]
            lines += [f"| {meth} + protein genes | {_fmt(fm[meth]['foscttm'])} | {_fmt(fm[meth]['recall_at_10'])} |"
                      for meth in ("cca", "ridge")]
        lines += ["", "| target | omicsclip | threshold | holds |", "|---|---|---|---|"]
        if r["held_out_from_tuning"]:
            lines[-2:] = ["", "| comparison (not a target) | omicsclip | best baseline | omicsclip better |",
                          "|---|---|---|---|"]
        for t in r["targets"].values():
            lines.append(f"| {t['target']} | {_fmt(t['omicsclip'])} | {_fmt(t['threshold'])} | "
                         f"{'yes' if t['holds'] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=[*FOSCTTM_MARGIN, *HELD_OUT])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override section.key=value (default: none; the targets are for the defaults)")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    results = {}
    with tempfile.TemporaryDirectory(prefix="omicsclip-bench-quality-") as d:
        for name in args.datasets:
            print(f"[{name}] ingest, train, evaluate ...", flush=True)
            results[name] = run_dataset(name, args.seed, args.threads, Path(d), args.overrides)
    md = markdown(results, args.seed)
    print(md)
    from omicsclip.io.atomic import atomic_path
    from omicsclip.io.jsonfile import write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    all_hold = all(t["holds"] for r in results.values() if not r["held_out_from_tuning"]
                   for t in r["targets"].values())
    payload = {"seed": args.seed, "threads": args.threads, "all_targets_hold": all_hold, "datasets": results}
    with atomic_path(args.out, overwrite=True) as tmp:
        write_json(tmp, payload)
    with atomic_path(args.out.with_suffix(".md"), overwrite=True) as tmp:
        tmp.write_text(md + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}; all targets hold: {all_hold}")


if __name__ == "__main__":
    main()
