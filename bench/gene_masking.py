"""``train.gene_masking``: does masking genes during training make queries that lack genes degrade less?

Trains pbmc10k models with ``train.gene_masking`` 0 (off) and the values given, the same seed and settings
otherwise, then embeds the held-out test cells' RNA with every model gene and with a random fraction of the model
genes removed from the input (seeded; the same genes for every model), and reports FOSCTTM of RNA against the
cells' own protein embedding. Validation cells choose; test cells are reported beside them.

Run::

    .venv/bin/python bench/gene_masking.py [--masking 0.2] [--missing 0.1 0.2] [--set train.epochs=60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
EXE = [sys.executable, "-m", "omicsclip.cli.main"]


def _run(log: Path, *args: str) -> None:
    with open(log, "a") as fh:
        if subprocess.run([*EXE, *args], stdout=fh, stderr=subprocess.STDOUT, check=False).returncode:
            raise SystemExit(f"omicsclip {args[0]} failed; see {log}")


def scores(model_dir: Path, store: Path, missing: list[float], seed: int) -> dict:
    """FOSCTTM (RNA vs protein embedding) of validation and test cells with a fraction of model genes removed."""
    from omicsclip.evaluation.metrics import foscttm
    from omicsclip.io.store import read_store
    from omicsclip.model.modelio import load_model

    model = load_model(model_dir)
    data = read_store(store)
    split = model.split.reindex(data.obs.index.astype(str)).to_numpy().astype(str)
    out: dict = {}
    for part in ("val", "test"):
        rows = np.flatnonzero(split == part)
        sub = data.subset(rows)
        prot = model.embed(prot=sub.prot, proteins=sub.protein_names)["prot"]
        for frac in [0.0, *missing]:
            drop = set(np.random.default_rng(seed).choice(model.genes, int(round(frac * len(model.genes))),
                                                           replace=False)) if frac else set()
            keep = np.array([g not in drop for g in sub.gene_names])
            rna = model.embed(rna=sub.rna[:, keep], genes=[g for g, k in zip(sub.gene_names, keep, strict=True)
                                                             if k])["rna"]
            out[f"{part}_foscttm_missing_{frac:g}"] = round(float(foscttm(rna, prot)), 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masking", type=float, nargs="+", default=[0.2], help="train.gene_masking values to try")
    ap.add_argument("--missing", type=float, nargs="+", default=[0.1, 0.2], help="fractions of model genes removed")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gene_masking.json")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="omicsclip-gene-masking-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    store = work / "pbmc10k.zarr"
    if not store.exists():
        _run(log, "ingest", str(next((SHARED / "pbmc10k_protein_v3").glob("*.h5ad"))), "--out", str(store),
             "--make-unique")
    sets = [x for s in args.sets for x in ("--set", s)]
    rows = {}
    for m in [0.0, *args.masking]:
        model = work / f"model_{m:g}"
        if not model.exists():
            _run(log, "train", str(store), "--out", str(model), *sets, "--set", f"train.gene_masking={m}",
                 "--set", f"train.seed={args.seed}")
        rows[f"{m:g}"] = scores(model, store, args.missing, args.seed)
        print(m, rows[f"{m:g}"], flush=True)
    result = {"settings": args.sets, "missing": args.missing, "gene_masking": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
