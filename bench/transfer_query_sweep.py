"""Query settings (``query.impute_k``, ``query.temperature``, ``query.transfer_from``) on cross-lab pairs.

Re-runs ``omicsclip query`` with each setting against the models and indices that a ``bench/transfer.py --workdir
W`` run left in ``W`` (nothing is retrained), and scores the imputed protein as bench/transfer.py does. Meant for
the pairs outside issue #15's bars (pbmc10k:eccite, bremsc:eccite, pbmc5p:bremsc): settings are chosen on those
cross-lab pairs, never on the pairs the bars are about.

Run::

    .venv/bin/python bench/transfer.py --pairs pbmc10k:eccite bremsc:eccite pbmc5p:bremsc --skip-totalvi \\
        --workdir W --out W/transfer.json
    .venv/bin/python bench/transfer_query_sweep.py W --pairs pbmc10k:eccite bremsc:eccite pbmc5p:bremsc \\
        --grid impute_k=10,20,50 --grid temperature=0,0.05,0.1 --grid transfer_from=same,cross \\
        --out bench/results/transfer_query_sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from transfer import pair_dir, pair_paths, score_output  # noqa: E402
from transfer_omicsclip import query_rna, read_imputed  # noqa: E402
from transfer_peers import load_dataset, prepare_pair  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep (CLI entry point); return the result written to ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path, help="a bench/transfer.py --workdir with the pairs' omicsclip runs")
    ap.add_argument("--pairs", nargs="+", required=True)
    ap.add_argument("--grid", action="append", default=[], required=True,
                    help="query key=v1,v2,... (repeatable), e.g. impute_k=10,20,50")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--small", action="store_true", help="the synthetic labs of bench/transfer.py --small")
    ap.add_argument("--seed", type=int, default=0, help="with --small: the seed of that run")
    args = ap.parse_args(argv)
    keys, values = [], []
    for g in args.grid:
        k, _, v = g.partition("=")
        if not k or not v:
            ap.error(f"--grid {g!r}: expected key=v1,v2,...")
        keys.append(k)
        values.append(v.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="omicsclip-qsweep-") as d:
        paths = pair_paths(args.pairs, Path(d), args.small, args.seed, "bench/transfer_query_sweep.py")
        runs = {key: pair_dir(args.workdir, key) / "omicsclip" for key in args.pairs}
        no_run = [f"{run} ({key})" for key, run in runs.items()
                  if not ((run / "index").exists() and (run / "query_rna.h5ad").exists())]
        if no_run:  # all checked before the first pair's sweep
            sys.exit(f"bench/transfer_query_sweep.py: no omicsclip run (index and query_rna.h5ad; bench/transfer.py "
                     f"--workdir) in {', '.join(no_run)}")
        for key in args.pairs:
            ref_key, query_key = key.split(":")
            pair = prepare_pair(load_dataset(paths[ref_key]), load_dataset(paths[query_key]), ref_key, query_key)
            run_dir = runs[key]
            barcodes = pair.query_protein.index.astype(str)  # the truth's rows
            for combo in itertools.product(*values):
                sets = [f"query.{k}={v}" for k, v in zip(keys, combo, strict=True)]
                overrides = [x for s in sets for x in ("--set", s)]
                try:
                    query_rna(Path(d) / "sweep.log", run_dir / "query_rna.h5ad", run_dir / "model",
                              run_dir / "index", Path(d) / "q", overrides)
                except RuntimeError as exc:  # e.g. a --grid key omicsclip query does not know
                    sys.exit(f"bench/transfer_query_sweep.py: {key} with {' '.join(sets)}: "
                             f"{str(exc).splitlines()[-1].strip()}")
                res = score_output(pair, {"protein": read_imputed(Path(d) / "q", barcodes)})
                row = {"pair": key, **dict(zip(keys, combo, strict=True)),
                       "mean_pearson": res["protein"]["mean_pearson"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    mean = pd.DataFrame(rows).groupby(keys)["mean_pearson"].agg(["mean", "size"]).sort_values("mean", ascending=False)
    print(mean.to_string())
    result = {"pairs": args.pairs, "grid": args.grid, "rows": rows,
              "mean_over_pairs": [{**dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)),
                                   "mean_pearson": float(r["mean"]), "n_pairs": int(r["size"])}
                                  for k, r in mean.iterrows()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
