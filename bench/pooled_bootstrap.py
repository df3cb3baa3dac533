"""How sure is "the pooled model is within 5 % of each dataset's own model"? A paired bootstrap over test cells.

Reads the models and stores a ``bench/pooled.py --variants pooled_default --train-seeds ... --workdir W`` run left
in ``W`` (nothing is retrained), embeds each dataset's held-out test cells with its own model and with the pooled
model (that dataset's cells, panel and genes, as ``omicsclip evaluate --dataset`` scores them), and computes each
cell's FOSCTTM (both directions averaged; the mean over cells is the FOSCTTM that bench/pooled.py reports, checked
here). Each resample draws the test cells with replacement once and scores both models, at every training seed,
on that draw; per dataset it reports the pooled / own ratio of mean FOSCTTM with its 95 % interval and the share
of resamples within the bar (ratio <= 1.05), at each seed and for the ratio of the means over the seeds.

What the interval measures: which test cells are scored (the cells were one random draw of a dataset's cells);
the candidates each cell is ranked among stay the whole test set. The spread across training seeds is the other
source, shown by the per-seed rows.

Run::

    .venv/bin/python bench/pooled.py --variants pooled_default --train-seeds 0,1,2,3,4 --workdir W \\
        --out bench/results/pooled_union_default_train_seeds.json
    .venv/bin/python bench/pooled_bootstrap.py W --seeds 0,1,2,3,4 --out bench/results/pooled_bootstrap.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from val_sweep import dataset_subsets, parse_seeds  # noqa: E402

BAR = 1.05  # issue #15: the pooled model's held-out FOSCTTM within 5 % of the per-dataset model's
VARIANT = "pooled_default"
PARITY_TOL = 1e-6  # the per-cell values must reproduce the FOSCTTM omicsclip evaluate reported for the same model


def per_cell_foscttm(model_dir: Path, data, store: Path, dataset: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Each test cell's FOSCTTM (both directions averaged) and its barcode, for one model on one dataset's cells
    (``data``: :func:`val_sweep.dataset_subsets` of ``store``, as ``omicsclip evaluate --dataset`` scores them).

    ``dataset``: that dataset of a pooled store (its barcodes lose the ``-<dataset>`` suffix pooling added).
    """
    from omicsclip.evaluation.evaluate import _align_split
    from omicsclip.evaluation.metrics import direction_stats
    from omicsclip.model.modelio import load_model

    model = load_model(model_dir)
    test = _align_split(data.obs, model.split, store) == "test"
    emb = model.embed(rna=data.rna[test], prot=data.prot[test], genes=data.gene_names, proteins=data.protein_names)
    cells = (direction_stats(emb["rna"], emb["prot"]).foscttm() + direction_stats(emb["prot"], emb["rna"]).foscttm()) / 2
    barcodes = data.obs.index.astype(str).to_numpy()[test]
    if dataset is not None:
        suffix = f"-{dataset}"
        if not np.char.endswith(barcodes.astype(str), suffix).all():
            raise SystemExit(f"bench/pooled_bootstrap.py: {store}: barcodes of {dataset} lack the suffix {suffix!r}")
        barcodes = np.asarray(pd.Index(barcodes).str[: -len(suffix)], dtype=object)
    return cells, barcodes


def interval(ratios: np.ndarray) -> dict:
    """95 % interval of resampled ratios and the share within the bar."""
    return {"ci95": [float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))],
            "p_within_bar": float((ratios <= BAR).mean())}


def dataset_bootstrap(own: list[np.ndarray], pooled: list[np.ndarray], n_boot: int, seed: int) -> dict:
    """Paired bootstrap of pooled / own mean FOSCTTM per training seed and for the ratio of the means over seeds.

    ``own[s]`` and ``pooled[s]``: per-cell FOSCTTM at training seed ``s``, rows the same cells in the same order.
    """
    own_m, pooled_m = np.stack(own), np.stack(pooled)  # seeds x cells
    n = own_m.shape[1]
    rng = np.random.default_rng(seed)
    boot_own, boot_pooled = np.empty((n_boot, len(own))), np.empty((n_boot, len(own)))
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        boot_own[b], boot_pooled[b] = own_m[:, idx].mean(1), pooled_m[:, idx].mean(1)
    per_seed = [{"own": float(own_m[s].mean()), "pooled": float(pooled_m[s].mean()),
                 "ratio": float(pooled_m[s].mean() / own_m[s].mean()),
                 **interval(boot_pooled[:, s] / boot_own[:, s])} for s in range(len(own))]
    over = {"ratio": float(pooled_m.mean() / own_m.mean()),
            **interval(boot_pooled.mean(1) / boot_own.mean(1))}
    return {"n_cells": n, "n_boot": n_boot, "per_seed": per_seed, "ratio_of_means_over_seeds": over}


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> dict:
    """Run the bootstrap (CLI entry point); return the result written to ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path, help="a bench/pooled.py --workdir (its --train-seeds run)")
    ap.add_argument("--seeds", type=parse_seeds, required=True, help="the training seeds of that run, e.g. 0,1,2")
    ap.add_argument("--datasets", nargs="+", default=["pbmc10k", "bremsc", "pbmc5p"])
    ap.add_argument("--pooled-store", default="pooled_union.zarr", help="the pooled store's name in the workdir")
    ap.add_argument("--n-boot", type=positive_int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    w = args.workdir
    if not w.is_dir():
        sys.exit(f"bench/pooled_bootstrap.py: {w}: no such workdir (a bench/pooled.py --workdir)")
    tag = args.pooled_store.removeprefix("pooled").removesuffix(".zarr")
    need = [w / args.pooled_store, *(w / f"{d}.zarr" for d in args.datasets)]
    need += [w / f"model_{d}_t{s}" for d in args.datasets for s in args.seeds]
    need += [w / f"model_{VARIANT}{tag}_t{s}" for s in args.seeds]
    missing = [str(p) for p in need if not p.exists()]
    if missing:  # all checked before the first model is loaded
        sys.exit(f"bench/pooled_bootstrap.py: not in the workdir: {', '.join(missing)}")
    from omicsclip.io.store import read_store

    result = {"workdir": str(w), "seeds": args.seeds, "bar": BAR, "datasets": {}}
    subsets = dataset_subsets(w / args.pooled_store, read_store(w / args.pooled_store))  # each dataset's cells
    unknown = [d for d in args.datasets if d not in subsets]
    if unknown:
        sys.exit(f"bench/pooled_bootstrap.py: --datasets {', '.join(unknown)}: not in {args.pooled_store} "
                 f"(it pools {', '.join(subsets)})")
    for d in args.datasets:
        own, pooled, check, first = [], [], [], None
        own_store = w / f"{d}.zarr"
        own_cells = dataset_subsets(own_store, read_store(own_store))[own_store.stem]
        for s in args.seeds:
            o, ob = per_cell_foscttm(w / f"model_{d}_t{s}", own_cells, own_store, None)
            p, pb = per_cell_foscttm(w / f"model_{VARIANT}{tag}_t{s}", subsets[d], w / args.pooled_store, d)
            order = pd.Index(pb).get_indexer(ob)  # the pooled model's rows in the own model's cell order
            if len(pb) != len(ob) or (order < 0).any():
                sys.exit(f"bench/pooled_bootstrap.py: {d}, seed {s}: the two models' test cells differ")
            first = ob if first is None else first
            if not np.array_equal(ob, first):  # every seed's rows must be the same cells, in one order
                sys.exit(f"bench/pooled_bootstrap.py: {d}: seed {s} holds out other test cells than seed "
                         f"{args.seeds[0]} (another split): the seeds' ratios would not be paired")
            own.append(o)
            pooled.append(p[order])
            for kind, vals, metrics in (("own", o, w / f"m_{d}_t{s}.json"),
                                        ("pooled", p, w / f"m_{VARIANT}{tag}_{d}_t{s}.json")):
                if metrics.exists():  # bench/pooled.py's number, from omicsclip evaluate
                    reported = json.loads(metrics.read_text())["methods"]["omicsclip"]["foscttm"]
                    check.append({"seed": s, "model": kind, "mean_here": float(vals.mean()), "evaluate": reported})
                    if abs(vals.mean() - reported) > PARITY_TOL:
                        sys.exit(f"bench/pooled_bootstrap.py: {d}, seed {s}, {kind} model: mean FOSCTTM {vals.mean():.6f}"
                                 f" here, {reported:.6f} in {metrics.name}: not the cells or model bench/pooled.py scored")
        if len(check) < 2 * len(args.seeds):
            print(f"warning: {d}: {2 * len(args.seeds) - len(check)} model(s) without bench/pooled.py's metrics "
                  "file: their per-cell values were not checked against omicsclip evaluate", file=sys.stderr)
        res = dataset_bootstrap(own, pooled, args.n_boot, args.seed)
        res["parity_with_evaluate"] = check
        result["datasets"][d] = res
        over = res["ratio_of_means_over_seeds"]
        print(f"{d} ({res['n_cells']} test cells): pooled / own per seed "
              + ", ".join(f"{r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" for r in res["per_seed"])
              + f"; ratio of the means {over['ratio']:.3f} [{over['ci95'][0]:.3f}, {over['ci95'][1]:.3f}], "
              f"within {BAR} in {100 * over['p_within_bar']:.1f}% of {args.n_boot} resamples", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
