"""Out-of-reference detection: AUROC of ``1 - mapping_score`` for a cell type left out of the reference.

On pbmc10k_protein_v3 (shared data), for each held-out type in ``--types`` (default B cells, CD14+ monocytes, NK
cells), through the installed CLI:

1. write the cells *without* that type and without the ``unknown`` cells to an ``.h5ad`` in the work folder,
   ``omicsclip ingest`` it. The 861 ``unknown`` cells are unlabelled cells of every type (by their protein
   markers, ~280 look like CD14+ monocytes, ~120 like NK cells, ~30 like B cells): kept in the reference, they
   would put the held-out type back into it;
2. ``omicsclip train`` a small, fast model on them (``--set`` overrides in :data:`TRAIN`), ``omicsclip embed``;
3. ``omicsclip index`` with ``index.splits=[train,val]``: the reference is the cells the model trained and
   validated on; the model's *test* cells of the kept types stay outside the reference;
4. ``omicsclip query`` every cell of the dataset given as RNA only (``query.k=50``, so that the neighbour table
   also gives the statistic at other ``k``).

Reported per held-out type (the positive class is the held-out type; score = ``1 - mapping_score``):

- ``auroc_all``: against every other labelled cell, reference cells included (the brief's protocol; a reference cell
  queried finds itself, which makes in-type cells look even more in-reference);
- ``auroc_heldout``: against the kept types' *test* cells only (not in the reference, not seen in training), the
  honest version;
- the same AUROCs for other statistics of the RNA -> RNA neighbour similarities (mean of the top k for several k,
  top-1, 50th), computed from the neighbour table, to choose ``index.mapping_k``;
- the fraction of cells flagged ``out_of_reference`` (``query.ood_alpha``) among held-out-type cells, in-type test
  cells and in-type reference cells.

    .venv/bin/python bench/ood.py [--work DIR] [--types "B cells" ...] [--epochs 30]

The work folder (default: a temporary one) keeps stores, models and indices between runs: a stage whose output
exists is skipped. Writes ``bench/results/ood.json`` and ``bench/results/ood.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA = SHARED / "pbmc10k_protein_v3" / "pbmc10k_protein_v3.h5ad"
RESULTS = REPO / "bench" / "results"
TYPES = ("B cells", "CD14+ monocytes", "NK cells")
UNKNOWN = "unknown"  # pbmc10k's unlabelled cells: never in the reference, never an in-type query cell
TRAIN = ["model.members=1", "preprocess.n_hvg=2000", "train.batch_size=256", "train.warmup_steps=20",
         "train.patience=1000", "train.num_threads=2", "train.device=cpu", "train.checkpoint_every=100000"]


def _exe() -> str:
    exe = shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")
    return exe


def run(*args: str) -> float:
    """Run one ``omicsclip`` command; return its wall time."""
    t0 = time.perf_counter()
    cmd = [_exe(), *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def slug(name: str) -> str:
    """Return a folder-safe name of a cell type."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def auroc(pos: np.ndarray, score: np.ndarray) -> float:
    """AUROC of ``score`` (higher = more out-of-reference) for the boolean ``pos``."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(pos, score))


def one_type(cell_type: str, full, work: Path, epochs: int, query_rna: Path) -> dict:
    """Leave ``cell_type`` out, build the reference, query every cell, score."""
    d = work / slug(cell_type)
    d.mkdir(parents=True, exist_ok=True)
    t = {}
    if not (d / "ref.zarr").exists():
        full[~full.obs["cell_type"].astype(str).isin([cell_type, UNKNOWN])].copy().write_h5ad(d / "ref.h5ad")
        t["ingest"] = run("ingest", str(d / "ref.h5ad"), "--out", str(d / "ref.zarr"))
    if not (d / "model").exists():
        t["train"] = run("train", str(d / "ref.zarr"), "--out", str(d / "model"), "--set", f"train.epochs={epochs}",
                         *[a for s in TRAIN for a in ("--set", s)])
    if not (d / "emb.zarr").exists():
        t["embed"] = run("embed", str(d / "ref.zarr"), "--model", str(d / "model"), "--out", str(d / "emb.zarr"),
                         "--device", "cpu")
    t["index"] = run("index", str(d / "emb.zarr"), "--out", str(d / "index"), "--set", "index.splits=[train,val]",
                     "--overwrite")
    t["query"] = run("query", str(query_rna), "--modality", "rna", "--model", str(d / "model"), "--index",
                     str(d / "index"), "--out", str(d / "res"), "--set", "query.device=cpu", "--set", "query.k=50",
                     "--overwrite")
    import anndata as ad

    split = ad.read_zarr(d / "emb.zarr").obs["split"].astype(str)
    cells = pd.read_csv(d / "res" / "mapping.tsv", sep="\t", index_col="query_id")
    cells = cells.loc[full.obs_names]
    ctype = full.obs["cell_type"].astype(str).to_numpy()
    pos = ctype == cell_type
    in_split = split.reindex(full.obs_names).to_numpy()
    test = ~pos & (in_split == "test")
    in_ref = ~pos & np.isin(in_split, ["train", "val"])
    known = ctype != UNKNOWN
    score = 1.0 - cells["mapping_score"].to_numpy()
    nb = pd.read_parquet(d / "res" / "neighbours.parquet")
    nb = nb[(nb["query_modality"] == "rna") & (nb["index_modality"] == "rna")]
    sims = nb.pivot(index="query_id", columns="rank", values="similarity").loc[full.obs_names].to_numpy()
    stats = {"mapping_score": score, "top1": -sims[:, 0], "kth50": -sims[:, 49],
             **{f"mean_top{k}": -sims[:, :k].mean(axis=1) for k in (5, 10, 20, 30, 50)}}
    sel = pos | test
    flag = cells["out_of_reference"].astype(str).str.lower().eq("true").to_numpy()
    out = {
        "cell_type": cell_type, "n_heldout_type": int(pos.sum()), "n_test_in_type": int(test.sum()),
        "n_reference": int(in_ref.sum()),
        "auroc_all": {k: round(auroc(pos[known], v[known]), 4) for k, v in stats.items()},
        "auroc_heldout": {k: round(auroc(pos[sel], v[sel]), 4) for k, v in stats.items()},
        "flagged": {"heldout_type": round(float(flag[pos].mean()), 4), "test_in_type": round(float(flag[test].mean()), 4),
                    "reference_in_type": round(float(flag[in_ref].mean()), 4)},
        "median_mapping_score": {"heldout_type": round(float(np.median(1 - score[pos])), 4),
                                 "test_in_type": round(float(np.median(1 - score[test])), 4),
                                 "reference_in_type": round(float(np.median(1 - score[in_ref])), 4)},
        "seconds": {k: round(v, 1) for k, v in t.items()},
    }
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    """Run every held-out type and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="work folder kept between runs (default: temporary)")
    ap.add_argument("--types", nargs="+", default=list(TYPES))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS / "ood.json")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA}: not found (set OMICSCLIP_SHARED_DATA)")
    import anndata as ad

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="omicsclip-ood-")
        args.work = Path(tmp.name)
    args.work.mkdir(parents=True, exist_ok=True)
    full = ad.read_h5ad(DATA)
    query_rna = args.work / "query_rna.h5ad"
    if not query_rna.exists():  # RNA only: the query maps cells by their RNA, like another lab's RNA-only cells
        ad.AnnData(X=full.X, obs=pd.DataFrame(index=full.obs_names), var=full.var).write_h5ad(query_rna)
    t0 = time.perf_counter()
    rows = [one_type(ct, full, args.work, args.epochs, query_rna) for ct in args.types]
    cfg = json.loads((args.work / slug(args.types[0]) / "res" / "summary.json").read_text())
    result = {"dataset": DATA.name, "protocol": "leave one type out; reference = train+val cells of the other labelled "
              "types; query = every cell, RNA only; AUROC over labelled cells", "train_overrides": [f"train.epochs={args.epochs}", *TRAIN],
              "mapping": cfg.get("mapping"), "types": rows, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| held-out type | AUROC (all cells) | AUROC (vs in-type test cells) | flagged: held-out / test / ref |",
             "|---|---|---|---|"]
    for r in rows:
        f = r["flagged"]
        lines.append(f"| {r['cell_type']} | {r['auroc_all']['mapping_score']:.3f} | "
                     f"{r['auroc_heldout']['mapping_score']:.3f} | {f['heldout_type']:.2f} / {f['test_in_type']:.2f}"
                     f" / {f['reference_in_type']:.2f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
