"""Cross-dataset transfer (issue #15): train on one dataset, query another's RNA only.

For each (reference, query) pair of ../shared/data, every method sees the reference's RNA + protein + labels and
the query's RNA only, on the genes both share. Scored on the query:

* imputed protein: Pearson per shared protein between the prediction and the truth, both re-centred over the
  shared sub-panel (truth = CLR of the query's counts over the shared proteins), mean over proteins;
* label transfer: accuracy on query cells whose label is a shared label (``unknown`` never counts);
* OOD: a cell type removed from the reference; AUROC of ``-score`` for its query cells (labelled cells only).

How sure a difference in imputation is: ``imputation_bootstrap`` per pair, a paired bootstrap over the query cells
(2,000 resamples, every method scored on the same draw) of omicsclip minus each baseline, and of the pooled model
minus the single one and the baselines: the difference, its 95 % interval and the share of resamples where the
lead is above (totalVI, run in its own venv, returns scores only and is not in it).

Methods: ``omicsclip`` (:func:`omicsclip_method`, the lead's), baselines on 50 PCs of the reference
(bench/transfer_peers.py: ``ridge``, ``knn`` for protein; ``logreg``, ``knn`` for labels; ``knn`` distance for
OOD) and the peer ``totalvi`` (bench/transfer_totalvi.py, in a separate scvi-tools venv::

    python3 -m venv /tmp/scvi-venv && /tmp/scvi-venv/bin/pip install torch==2.13.0 scvi-tools

Run::

    .venv/bin/python bench/transfer.py [--pairs bremsc:pbmc10k ...] [--seed 0] [--skip-totalvi] [--skip-omicsclip]
    .venv/bin/python bench/transfer.py --small      # tiny synthetic two-lab run (seconds; no real data)
    # a pooled reference (the pair's reference + 5' PBMC, union of genes and panels) against the single one:
    .venv/bin/python bench/transfer.py --pairs bremsc:pbmc10k pbmc10k:bremsc --pooled-with pbmc5p --skip-totalvi \
        --out bench/results/transfer_pooled.json
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

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = BENCH / "results"

from transfer_metrics import label_accuracy, ood_eval, paired_bootstrap, protein_pearson  # noqa: E402
from transfer_omicsclip import omicsclip_method  # noqa: E402
from transfer_peers import Pair, hvg_mask, lognorm, prepare_pair, run_baselines, run_ood_baseline  # noqa: E402

DATASETS = {"bremsc": "bremsc_inhouse_pbmc", "pbmc10k": "pbmc10k_protein_v3",
            "pbmc5p": "pbmc_5prime_totalseqc_10x", "eccite": "eccite_pbmc_citefuse"}
PAIRS = ["bremsc:pbmc10k", "pbmc10k:bremsc", "pbmc10k:pbmc5p", "pbmc5p:pbmc10k", "bremsc:pbmc5p"]
OOD_TYPES = {"bremsc:pbmc10k": "B cells", "pbmc10k:bremsc": "B cells",  # removed from the reference
             "labA:labB": "NK", "labB:labA": "NK"}  # (--small)
TOTALVI_HVG = 4000  # scvi docs: HVGs on the reference; every real pair here shares fewer genes, so all are kept
# totalVI budget: a fixed number of optimiser steps (batch 256 over the 90% training cells), i.e. max_epochs =
# TOTALVI_STEPS * 256 / (0.9 * n_cells), clipped to [20, 400]: ~40-70 epochs on these pairs, so each pair trains
# in about 5 minutes on 2 CPU cores. scvi's own rule (400 epochs below 20k cells) does not fit that; pass
# --max-epochs 400 on a bigger machine. Early stopping (scvi's default) may end a run sooner.
TOTALVI_STEPS = 1500
SCVI_PYTHON = Path("/tmp/scvi-venv/bin/python")


# --- omicsclip: bench/transfer_omicsclip.py (the CLI path) ---------------------------------------------


def score_output(pair: Pair, output: dict, predictions: dict | None = None, name: str | None = None) -> dict:
    """Score a method's raw output (the :func:`omicsclip_method` contract) on the pair's truth.

    ``predictions``, if given, receives the imputed protein under ``name`` (for :func:`compare_imputation`).
    """
    if (predictions is None) != (name is None):
        raise ValueError("score_output: predictions and name go together")
    res: dict = {}
    if output.get("protein") is not None:
        pred = output["protein"][pair.proteins].to_numpy(dtype=np.float64)
        res["protein"] = protein_pearson(pred, pair.query_protein.to_numpy(), pair.proteins)
        if predictions is not None:
            predictions[name] = pred
    if output.get("labels") is not None and pair.labels:
        res["labels"] = label_accuracy(output["labels"], pair.query_labels, pair.labels)
    if "seconds" in output:
        res["seconds"] = float(output["seconds"])
    return res


def compare_imputation(pair: Pair, predictions: dict[str, np.ndarray], seed: int) -> dict:
    """Paired bootstraps of the imputation: omicsclip against each baseline, the pooled model against both.

    totalVI runs in its own venv and returns scores, not predictions, so it is not in these comparisons.
    """
    truth = pair.query_protein.to_numpy()
    out = {}
    for lead in ("omicsclip", "omicsclip_pooled"):
        if lead in predictions:
            out[lead] = paired_bootstrap({m: p for m, p in predictions.items() if m != "omicsclip_pooled" or
                                          lead == m}, truth, lead, seed=seed)
    return out


# --- totalVI peer ----------------------------------------------------------------------------------------


def write_totalvi_inputs(pair: Pair, workdir: Path, n_hvg: int = TOTALVI_HVG) -> tuple[Path, Path]:
    """Write ``input.h5ad`` (reference + query, query protein all zeros) and ``truth.npz`` for the driver."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    keep = hvg_mask(lognorm(pair.ref_rna), n_hvg)  # on the reference only
    genes = [g for g, k in zip(pair.genes, keep, strict=True) if k]
    x = sp.vstack([pair.ref_rna[:, keep], pair.query_rna[:, keep]], format="csr").astype(np.float32)
    n_ref, n_q = pair.ref_rna.shape[0], pair.query_rna.shape[0]
    obs = pd.DataFrame({"dataset": pd.Categorical([pair.ref_name] * n_ref + [pair.query_name] * n_q)},
                       index=[f"r{i}" for i in range(n_ref)] + [f"q{i}" for i in range(n_q)])
    prot = np.vstack([pair.ref_protein.to_numpy(np.float32),
                      np.zeros((n_q, pair.ref_protein.shape[1]), np.float32)])
    a = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))
    a.obsm["protein_expression"] = pd.DataFrame(prot, index=obs.index, columns=list(pair.ref_protein.columns))
    workdir.mkdir(parents=True, exist_ok=True)
    h5ad, truth = workdir / "input.h5ad", workdir / "truth.npz"
    a.write_h5ad(h5ad)
    empty = np.array([], dtype=object)
    np.savez(truth, query_protein=pair.query_protein.to_numpy(np.float32), proteins=np.array(pair.proteins),
             query_labels=empty if pair.query_labels is None else pair.query_labels.astype(str),
             ref_labels=empty if pair.ref_labels is None else pair.ref_labels.astype(str),
             shared_labels=np.array(pair.labels, dtype=str))
    return h5ad, truth


def totalvi_epochs(n_cells: int, steps: int = TOTALVI_STEPS) -> int:
    """Return the totalVI epoch budget for ``n_cells`` (reference + query): ``steps`` optimiser steps."""
    return int(np.clip(round(steps * 256 / (0.9 * n_cells)), 20, 400))


def run_totalvi(pair: Pair, workdir: Path, seed: int, python: Path = SCVI_PYTHON, threads: int = 2,
                max_epochs: int | None = None) -> dict:
    """Run bench/transfer_totalvi.py on the pair in the scvi-tools venv; return its result (or an error)."""
    if max_epochs is None:
        max_epochs = totalvi_epochs(pair.ref_rna.shape[0] + pair.query_rna.shape[0])
    if not python.exists():
        return {"error": f"{python} not found; create the venv: python3 -m venv /tmp/scvi-venv && "
                         "/tmp/scvi-venv/bin/pip install torch==2.13.0 scvi-tools"}
    h5ad, truth = write_totalvi_inputs(pair, workdir)
    out = workdir / "totalvi.json"
    args = {"h5ad": str(h5ad), "truth": str(truth), "out": str(out), "seed": seed, "threads": threads,
            "max_epochs": max_epochs, "ref_batch": pair.ref_name, "query_batch": pair.query_name}
    (workdir / "args.json").write_text(json.dumps(args))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    p = subprocess.run([str(python), str(BENCH / "transfer_totalvi.py"), str(workdir / "args.json")],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0 or not out.exists():
        return {"error": f"totalVI driver failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-3:]}"}
    res = json.loads(out.read_text())
    res["wall_seconds"] = time.perf_counter() - t0
    return res


# --- one pair --------------------------------------------------------------------------------------------


def pair_errors(pairs: list[str], known: dict[str, Path] | list[str], pooled_with: str | None = None) -> str | None:
    """One line naming what is wrong with ``ref:query`` keys (and ``--pooled-with`` names), or ``None``."""
    names = sorted(known)
    for key in pairs:
        parts = key.split(":")
        if len(parts) != 2 or parts[0] == parts[1] or not set(parts) <= set(names):
            return f"pair {key!r}: expected REF:QUERY, two different datasets of {', '.join(names)}"
    unknown = [k for k in (pooled_with or "").split(",") if k.strip() and k.strip() not in names]
    return f"--pooled-with {', '.join(unknown)}: not one of {', '.join(names)}" if unknown else None


def pair_paths(pairs: list[str], tmp: Path, small: bool, seed: int, prog: str,
               pooled_with: str | None = None) -> dict[str, Path]:
    """The datasets' ``.h5ad`` paths for ``pairs`` (``small``: the synthetic labs, written to ``tmp``).

    Exits with one line, naming ``prog``, for a malformed pair or ``--pooled-with``, or a file of a dataset they
    use that is not there.
    """
    paths = small_paths(tmp, seed) if small else {k: SHARED / v / f"{v}.h5ad" for k, v in DATASETS.items()}
    bad = pair_errors(pairs, paths, pooled_with)
    if bad:
        sys.exit(f"{prog}: {bad}")
    used = {k for key in pairs for k in key.split(":")} | {k.strip() for k in (pooled_with or "").split(",")
                                                          if k.strip()}
    absent = sorted(str(paths[k]) for k in used if not paths[k].exists())
    if absent:
        sys.exit(f"{prog}: no such file: {', '.join(absent)}")
    return paths


def pair_dir(workdir: Path, key: str) -> Path:
    """The folder of pair ``key`` (``ref:query``) in a ``--workdir``; its omicsclip run is ``omicsclip`` in it."""
    return workdir / key.replace(":", "_")


def pool_members(pooled_with: str | None, ref_key: str, query_key: str) -> list[str]:
    """Datasets pooled with a pair's reference (``--pooled-with a,b``): the reference itself left out, and none
    when the query is among them (the query is never in the pool)."""
    extra = list(dict.fromkeys(k.strip() for k in (pooled_with or "").split(",") if k.strip() and k.strip() != ref_key))
    return [] if query_key in extra else extra


def run_pair(key: str, paths: dict[str, Path], seed: int, workdir: Path, skip_totalvi: bool,
             skip_omicsclip: bool, max_epochs: int | None, sets: tuple[str, ...] = (),
             pooled_with: str | None = None) -> dict:
    """Run every method on one ``ref:query`` pair and return its results.

    ``pooled_with``: also ``omicsclip_pooled``, a reference pooled from the pair's reference and these datasets
    (comma-separated; skipped when the query is one of them), scored on the same query cells and proteins.
    """
    from transfer_peers import load_dataset

    ref_key, query_key = key.split(":")
    ref, query = load_dataset(paths[ref_key]), load_dataset(paths[query_key])
    pair = prepare_pair(ref, query, ref_key, query_key)
    out: dict = {"pair": pair.summary(), "methods": {}}
    print(f"[{key}] {out['pair']['n_ref']} ref / {out['pair']['n_query']} query cells, {len(pair.genes)} genes, "
          f"proteins {pair.proteins}, labels {pair.labels}", flush=True)
    preds: dict[str, np.ndarray] = {}
    out["methods"].update(run_baselines(pair, seed, preds))
    removed = OOD_TYPES.get(key)
    removed_pair = None
    if removed and pair.ref_labels is not None and removed in pair.labels:
        removed_pair = prepare_pair(ref, query, ref_key, query_key, remove_type=removed)
        out["methods"]["knn"]["ood"] = run_ood_baseline(removed_pair, removed, seed)
    if not skip_omicsclip:
        t = time.perf_counter()
        res = score_output(pair, omicsclip_method(paths[ref_key], paths[query_key], pair.genes,
                                                   pair_dir(workdir, key) / "omicsclip", seed, sets),
                           preds, "omicsclip")
        res.setdefault("seconds", time.perf_counter() - t)
        if removed_pair is not None:  # a reference (model and index) without the removed type
            ref_removed = pair_dir(workdir, key) / "ref_removed.h5ad"
            ref_removed.parent.mkdir(parents=True, exist_ok=True)
            kept = ~ref.obs["cell_type"].astype(str).isin([removed, "unknown"])  # as prepare_pair(remove_type=)
            ref[kept.to_numpy()].copy().write_h5ad(ref_removed)
            ood = omicsclip_method(ref_removed, paths[query_key], pair.genes,
                                   pair_dir(workdir, key) / "omicsclip_ood", seed, sets)
            res["ood"] = ood_eval(ood["mapping_score"], pair.query_labels, removed)
        out["methods"]["omicsclip"] = res
        extra = pool_members(pooled_with, ref_key, query_key)
        if extra:
            pooled = omicsclip_method([paths[ref_key], *(paths[k] for k in extra)], paths[query_key], pair.genes,
                                      pair_dir(workdir, key) / f"omicsclip_pooled_{'_'.join(extra)}",
                                      seed, sets)
            out["methods"]["omicsclip_pooled"] = {**score_output(pair, pooled, preds, "omicsclip_pooled"),
                                                  "pooled_with": ",".join(extra)}
        try:
            out["imputation_bootstrap"] = compare_imputation(pair, preds, seed)
        except ValueError as exc:  # e.g. too few cells every method predicted: the pair's results are kept
            out["imputation_bootstrap"] = {"error": str(exc)}
    if not skip_totalvi:
        out["methods"]["totalvi"] = run_totalvi(pair, pair_dir(workdir, key) / "totalvi", seed,
                                                max_epochs=max_epochs)
    return out


# --- report ----------------------------------------------------------------------------------------------


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def markdown(result: dict) -> str:
    """Return the pair x method table (mean Pearson, accuracy, OOD AUROC, seconds) as markdown."""
    lines = ["| pair | method | mean Pearson | accuracy | OOD AUROC | seconds |", "|---|---|---|---|---|---|"]
    for key, pr in result["pairs"].items():
        for method, r in pr["methods"].items():
            if "error" in r:
                lines.append(f"| {key} | {method} | {r['error'][:60]} | | | |")
                continue
            sec = r.get("seconds", 0.0) + r.get("label_seconds", 0.0)
            lines.append(f"| {key} | {method} | {_fmt(r.get('protein', {}).get('mean_pearson'))} | "
                         f"{_fmt(r.get('labels', {}).get('accuracy'))} | {_fmt(r.get('ood', {}).get('auroc'))} | "
                         f"{sec:.1f} |")
    boot = [(key, lead, other, b) for key, pr in result["pairs"].items()
            for lead, vs in pr.get("imputation_bootstrap", {}).items() if lead != "error" for other, b in vs.items()]
    failed = [f"{key}: {pr['imputation_bootstrap']['error']}" for key, pr in result["pairs"].items()
              if "error" in pr.get("imputation_bootstrap", {})]
    if failed:
        lines += ["", "Imputation bootstrap not run: " + "; ".join(failed)]
    if boot:
        lines += ["", "Imputation, paired bootstrap over the query cells (mean Pearson, lead minus other):", "",
                  "| pair | lead | other | cells | difference | 95% interval | lead above in |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {key} | {lead} | {other} | {b['n_cells']} | {b['delta']:+.4f} | [{b['ci95'][0]:+.4f}, "
                  f"{b['ci95'][1]:+.4f}] | {100 * b['p_lead_above']:.1f}% of {b['n_boot']} |"
                  for key, lead, other, b in boot]
    return "\n".join(lines) + "\n"


def small_paths(tmp: Path, seed: int) -> dict[str, Path]:
    """Write two synthetic "labs" (different cells, batch effects, gene sets and panels); return their paths."""
    from omicsclip.io.synthetic import make_synthetic

    data = make_synthetic(n_cells=500, n_genes=150, n_proteins=8, n_types=4, n_batches=2, seed=seed)
    paths = {}
    for i, lab in enumerate(("labA", "labB")):
        a = data.subset(np.flatnonzero(data.obs["batch"].astype(str).to_numpy() == f"batch{i + 1}")).to_anndata()
        if lab == "labB":  # a smaller panel and a partly different gene set
            a = a[:, a.var_names[:-10]].copy()
            a.obsm["protein"] = a.obsm["protein"].iloc[:, :6]
        a.obs["cell_type"] = a.obs["cell_type"].astype(str)
        paths[lab] = tmp / f"{lab}.h5ad"
        a.write_h5ad(paths[lab])
    return paths


def merge_totalvi(result: dict, earlier: dict, source: str) -> list[str]:
    """Copy totalVI's rows of ``earlier`` (a bench/transfer.py result) into ``result``'s pairs that lack one.

    Only where both runs prepared the pair alike (same cells, genes and proteins): totalVI does not depend on
    omicsclip's code, and takes most of a full run. Returns the pairs copied; each row records ``from``.
    """
    copied = []
    for key, pr in result["pairs"].items():
        old = earlier.get("pairs", {}).get(key)
        if old is None or "totalvi" not in old["methods"] or "totalvi" in pr["methods"]:
            continue
        if old["pair"] != pr["pair"]:
            sys.exit(f"bench/transfer.py: --totalvi-from {source}: pair {key} was prepared differently there")
        pr["methods"]["totalvi"] = {**old["methods"]["totalvi"], "from": source}
        copied.append(key)
    return copied


def _write(out: Path, result: dict) -> None:
    from omicsclip.io.atomic import atomic_path
    from omicsclip.io.jsonfile import write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, overwrite=True) as tmp_out:
        write_json(tmp_out, result)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (CLI entry point); return the result written to ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=None, help=f"ref:query keys (default: {' '.join(PAIRS)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "transfer.json")
    ap.add_argument("--skip-totalvi", action="store_true")
    ap.add_argument("--skip-omicsclip", action="store_true", help="baselines (and totalVI) only")
    ap.add_argument("--max-epochs", type=int, default=None,
                    help=f"totalVI epochs (default: {TOTALVI_STEPS} optimiser steps' worth, 20..400)")
    ap.add_argument("--small", action="store_true", help="tiny synthetic two-lab run (tests)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="omicsclip config override (repeatable), e.g. train.epochs=5 for a quick run")
    ap.add_argument("--workdir", type=Path, default=None, help="keep intermediate files here (default: temp)")
    ap.add_argument("--pooled-with", default=None,
                    help="also omicsclip_pooled: a reference pooled from each pair's reference and these datasets "
                         "(comma-separated, e.g. bremsc,pbmc5p)")
    ap.add_argument("--totalvi-from", type=Path, default=None,
                    help="with --skip-totalvi: copy totalVI's rows of these pairs from an earlier result JSON")
    args = ap.parse_args(argv)
    earlier = None
    if args.totalvi_from:
        try:
            earlier = json.loads(args.totalvi_from.read_text())
        except (OSError, ValueError) as exc:
            sys.exit(f"bench/transfer.py: --totalvi-from {args.totalvi_from}: unreadable ({type(exc).__name__})")

    with tempfile.TemporaryDirectory(prefix="omicsclip-bench-transfer-") as d:
        workdir = args.workdir or Path(d)
        pairs = args.pairs or (["labA:labB", "labB:labA"] if args.small else PAIRS)
        paths = pair_paths(pairs, Path(d), args.small, args.seed, "bench/transfer.py", args.pooled_with)
        result = {"seed": args.seed, "small": args.small, "omicsclip_sets": args.sets,
                  "totalvi_max_epochs": args.max_epochs or f"{TOTALVI_STEPS} steps", "pooled_with": args.pooled_with,
                  "ood_types": {k: v for k, v in OOD_TYPES.items() if k in pairs}, "pairs": {}}
        for key in pairs:
            result["pairs"][key] = run_pair(key, paths, args.seed, workdir, args.skip_totalvi,
                                            args.skip_omicsclip, args.max_epochs, tuple(args.sets),
                                            args.pooled_with)
            _write(args.out, result)  # after every pair: a long run keeps what it has
            if earlier is not None:  # (written first: a pair prepared differently there ends the run, not the pair)
                merge_totalvi({"pairs": {key: result["pairs"][key]}}, earlier, str(args.totalvi_from))
                _write(args.out, result)
    table = markdown(result)
    print(table)
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
