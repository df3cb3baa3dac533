"""Is one omicsclip setting's cross-lab imputation better than another's? A paired bootstrap of two runs.

Reads the imputed protein that two ``bench/transfer.py --workdir`` runs (e.g. the defaults and ``--set
train.X=...``) left for the same pairs, scores both on each pair's query truth as bench/transfer.py does, and
reports B minus A per pair: the difference of mean Pearson, its 95 % interval from a paired bootstrap over the
query cells (:func:`transfer_metrics.paired_bootstrap`) and the share of resamples where B is above. Two runs of
one model on the same cells are strongly correlated, so this interval is far narrower than one against a baseline.
As with bench/transfer_query_sweep.py, settings are compared on the pairs outside issue #15's bars.

Run::

    .venv/bin/python bench/transfer.py --pairs pbmc10k:eccite bremsc:eccite pbmc5p:bremsc --skip-totalvi \\
        --workdir WA --out WA/transfer.json
    .venv/bin/python bench/transfer.py ... --set train.gene_shift=1 --workdir WB --out WB/transfer.json
    .venv/bin/python bench/transfer_compare.py WA WB --names off,shift1 \\
        --pairs pbmc10k:eccite bremsc:eccite pbmc5p:bremsc --out bench/results/transfer_compare_gene_shift.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from transfer import pair_dir, pair_paths  # noqa: E402
from transfer_metrics import paired_bootstrap, protein_pearson  # noqa: E402
from transfer_omicsclip import read_imputed  # noqa: E402
from transfer_peers import load_dataset, prepare_pair  # noqa: E402


def imputed_output(workdir: Path, key: str) -> Path:
    """The imputed protein a bench/transfer.py workdir's omicsclip run of pair ``key`` left."""
    return pair_dir(workdir, key) / "omicsclip" / "query" / "imputed_protein.h5ad"


def main(argv: list[str] | None = None) -> dict:
    """Compare the two runs (CLI entry point); return the result written to ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="bench/transfer.py --workdir of the first run (the reference point)")
    ap.add_argument("b", type=Path, help="bench/transfer.py --workdir of the second run")
    ap.add_argument("--names", default="A,B", help="two comma-separated names for the runs (default: A,B)")
    ap.add_argument("--pairs", nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (with --small: also that run's seed)")
    ap.add_argument("--small", action="store_true", help="the synthetic labs of bench/transfer.py --small")
    args = ap.parse_args(argv)
    names = args.names.split(",")
    if len(names) != 2 or len(set(names)) != 2 or not all(names):
        ap.error(f"--names {args.names!r}: expected two different names, e.g. off,shift1")
    name_a, name_b = names
    with tempfile.TemporaryDirectory(prefix="omicsclip-tcompare-") as d:
        paths = pair_paths(args.pairs, Path(d), args.small, args.seed, "bench/transfer_compare.py")
        no_run = [str(imputed_output(w, key)) for w in (args.a, args.b) for key in args.pairs
                  if not imputed_output(w, key).exists()]
        if no_run:  # all checked before the first pair is read
            sys.exit(f"bench/transfer_compare.py: no omicsclip query output (bench/transfer.py --workdir) in "
                     f"{', '.join(no_run)}")
        rows = []
        for key in args.pairs:
            ref_key, query_key = key.split(":")
            pair = prepare_pair(load_dataset(paths[ref_key]), load_dataset(paths[query_key]), ref_key, query_key)
            truth, barcodes = pair.query_protein.to_numpy(), pair.query_protein.index.astype(str)
            try:  # rows in the truth's order; a run of another query is refused
                preds = {n: read_imputed(imputed_output(w, key).parent, barcodes)[pair.proteins].to_numpy(
                    dtype=np.float64) for n, w in ((name_b, args.b), (name_a, args.a))}
            except ValueError as exc:
                sys.exit(f"bench/transfer_compare.py: {key}: {exc}")
            boot = paired_bootstrap(preds, truth, name_b, seed=args.seed)[name_a]
            row = {"pair": key, **{n: protein_pearson(p, truth, pair.proteins)["mean_pearson"]
                                   for n, p in preds.items()}, **boot}
            rows.append(row)
            print(f"{key}: {name_b} {row[name_b]:.4f} vs {name_a} {row[name_a]:.4f}, difference "
                  f"{boot['delta']:+.4f} [{boot['ci95'][0]:+.4f}, {boot['ci95'][1]:+.4f}], {name_b} above in "
                  f"{100 * boot['p_lead_above']:.1f}% of {boot['n_boot']} resamples", flush=True)
    result = {"a": str(args.a), "b": str(args.b), "names": names, "pairs": args.pairs, "rows": rows,
              "mean_delta": float(np.mean([r["delta"] for r in rows]))}
    print(f"mean difference over {len(rows)} pair(s): {result['mean_delta']:+.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
