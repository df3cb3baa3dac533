"""Compare training configs on VALIDATION cells only (never the test cells): best validation FOSCTTM per run.

For each named config (a list of ``section.key=value`` overrides on top of the defaults) and each seed, train on
the store (``split.seed`` = ``train.seed`` = seed, so every seed is also a different split) and read the best
validation FOSCTTM from ``train_log.jsonl``, the number early stopping selects on. Prints a line per config (values
per seed and their mean) and appends one JSON line per run to ``--out``. Use it to choose defaults without looking
at the test cells that ``bench/quality.py`` reports.

    .venv/bin/python bench/val_sweep.py STORE.zarr --seeds 1,2,3,4 \\
        --config base= --config steps1500=train.min_steps=1500 --config lr3e3=train.lr=0.003,train.batch_size=128

(``--config NAME=`` with nothing after ``=`` is the defaults; several overrides are separated by commas.)
For a store pooled from several datasets, ``--by-dataset`` also records each dataset's own validation FOSCTTM
(its validation cells, its own panel and genes, as ``omicsclip evaluate --dataset`` scores it) of the saved model
(a plain store: its validation FOSCTTM under the store's name).

A choice that itself selects on the validation cells (``train.val_within``: which score early stopping reads) is
favoured when it is judged on them. ``--held-out-outside 0`` scores each dataset instead on the run's *test*
cells that are not test cells of split 0 (the quality bars' split): cells no run trained or stopped on, and never
the ones the bars score (``held_out_foscttm_by_dataset``, with the cell counts).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_config(text: str) -> tuple[str, list[str]]:
    """``NAME=a.b=1,c.d=[2,3]`` -> ("NAME", ["a.b=1", "c.d=[2,3]"]): a comma starts a new override only
    where a ``section.key=`` follows, so list values keep theirs."""
    name, _, rest = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--config {text!r}: expected NAME=overrides")
    return name, [x for x in re.split(r",(?=[A-Za-z_][\w]*\.[\w.]+=)", rest) if x]


def dataset_subsets(store: Path, data) -> dict[str, object]:
    """Each pooled dataset's cells with its own panel and genes (a plain store: itself, named by its path)."""
    from omicsclip.evaluation.evaluate import _one_dataset
    from omicsclip.io.panels import panels_of

    panels = panels_of(data.uns)
    if panels is None:
        return {store.stem: _one_dataset(data, None, store)}
    return {name: _one_dataset(data, name, store) for name in sorted(panels)}


def dataset_foscttm(store: Path, model_dir: Path, subsets: dict, bar_test=None) -> tuple[dict, dict | None]:
    """Each dataset's FOSCTTM with the saved (best) model: on its validation cells, and with ``bar_test``
    (barcode -> whether the bars' split holds the cell out for test) on the run's test cells outside it, as
    ``{name: FOSCTTM}`` plus ``{name + "_cells": count}`` (else ``None``)."""
    from omicsclip.evaluation.evaluate import _align_split
    from omicsclip.evaluation.metrics import foscttm
    from omicsclip.model.modelio import load_model

    model = load_model(model_dir)
    val, held = {}, None if bar_test is None else {}
    for name, sub in subsets.items():
        split = _align_split(sub.obs, model.split, store)
        cells = [("val", split == "val", val)]
        if held is not None:
            outside = ~bar_test.reindex(sub.obs.index.astype(str)).to_numpy(dtype=bool)
            cells.append(("held", (split == "test") & outside, held))
            held[f"{name}_cells"] = int(cells[-1][1].sum())
        for _, keep, out in cells:
            emb = model.embed(rna=sub.rna[keep], prot=sub.prot[keep], genes=sub.gene_names,
                              proteins=sub.protein_names)
            out[name] = foscttm(emb["rna"], emb["prot"])
    return val, held


def bar_test_cells(data, seed: int):
    """Barcode -> whether split ``seed`` of the default split settings (the bars' split) holds the cell out for
    test, split as training does (whatever split settings a swept config has)."""
    from omicsclip.config import default_config
    from omicsclip.io.split import store_split

    split = store_split(data.obs, data.uns, **{**default_config()["split"], "seed": seed})
    return (split == "test").set_axis(split.index.astype(str))


def parse_seeds(text: str) -> list[int]:
    """``1,2,3`` -> [1, 2, 3]."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--seeds", type=parse_seeds, default=[1, 2, 3, 4])
    ap.add_argument("--config", dest="configs", action="append", type=parse_config, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("val_sweep.jsonl"))
    ap.add_argument("--by-dataset", action="store_true", help="also each (pooled) dataset's validation FOSCTTM")
    ap.add_argument("--held-out-outside", type=int, default=None, metavar="SEED",
                    help="also each dataset's FOSCTTM on the run's test cells outside split SEED's "
                         "test cells (the bars' split, 0)")
    args = ap.parse_args()
    if args.held_out_outside is not None and not args.by_dataset:
        ap.error("--held-out-outside needs --by-dataset")
    if not args.store.exists():
        ap.error(f"{args.store}: no such store")
    if args.held_out_outside is not None and args.held_out_outside in args.seeds:
        ap.error(f"--held-out-outside {args.held_out_outside}: that split is among --seeds; its test cells are the "
                 "ones to stay away from")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from omicsclip.config import load_config
    from omicsclip.evaluation.selection import read_train_log
    from omicsclip.train.run import train_model

    torch.set_num_threads(args.threads)
    seeds = args.seeds
    subsets, bar = None, None
    if args.by_dataset:
        from omicsclip.io.store import read_store

        data = read_store(args.store)
        subsets = dataset_subsets(args.store, data)  # once: they do not depend on the run
        if args.held_out_outside is not None:
            bar = bar_test_cells(data, args.held_out_outside)
    with args.out.open("a") as out:
        for name, overrides in args.configs:
            vals = []
            for seed in seeds:
                cfg = load_config(None, [f"train.seed={seed}", f"split.seed={seed}", "train.device=cpu", *overrides])
                with tempfile.TemporaryDirectory(prefix="omicsclip-val-sweep-") as d:
                    t0 = time.perf_counter()
                    model = train_model(args.store, Path(d) / "model", cfg)
                    seconds = time.perf_counter() - t0
                    log = read_train_log(model / "train_log.jsonl")
                    per = {}
                    if subsets is not None:
                        val, held = dataset_foscttm(args.store, model, subsets, bar)
                        per["val_foscttm_by_dataset"] = val
                        if held is not None:
                            per["held_out_foscttm_by_dataset"] = held
                            per["held_out_outside_split"] = args.held_out_outside
                best = min(r["val_foscttm"] for r in log if r.get("val_foscttm") is not None)
                vals.append(best)
                # val_foscttm is what early stopping read: under another train.val_within it is another score
                # (within datasets vs among all cells); compare configs on val_foscttm_by_dataset then
                out.write(json.dumps({"config": name, "overrides": overrides, "seed": seed, "val_foscttm": best,
                                      "val_within": cfg["train"]["val_within"],
                                      **per, "epochs": len(log), "seconds": seconds}) + "\n")
                out.flush()
            print(f"{name}: val FOSCTTM {[round(v, 4) for v in vals]} mean {statistics.mean(vals):.4f}", flush=True)


if __name__ == "__main__":
    main()
