"""Why a pooled reference imputes another lab's protein worse than a single one (issue #15): a decomposition.

Reads what ``bench/transfer.py --pooled-with ... --workdir DIR`` kept for a pair (the single model under
``omicsclip/``, the pooled one under ``omicsclip_pooled_*/``: models, reference embeddings, indices) and imputes the
query's protein from the reference cells' CLR in several ways, scored like bench/transfer.py (Pearson per shared
protein, re-centred over the shared sub-panel):

* ``single``: the single-dataset model, as bench/transfer.py runs it;
* ``pooled``: the pooled model, the k nearest of all reference cells, each protein averaged over those of them that
  measured it (``omicsclip query`` before ``index.protein_sources``);
* ``pooled_own_cells``: the pooled model, neighbours among the pair's own reference dataset only: a loss that
  remains here is in the pooled embedding, not in mixing neighbours from other panels;
* ``pooled_per_protein``: for each protein, the k nearest cells among those that measured it;
* ``pooled_sourced``: each protein several datasets measured from the k nearest cells of the dataset that measures
  it best (``index.protein_sources: best``, the default: the sources the index recorded), what ``omicsclip query``
  does;
* ``pooled_zscore``: each dataset's CLR standardised per protein before averaging (panels of different size and
  antibody titres put CLR on different scales);
* ``pooled_own_panel``: the query embedded with only the genes the pair's reference measured (as every training
  cell of that dataset was), neighbours among that dataset's cells.

Neighbours: exact cosine search, ``query.impute_k`` (20) and ``query.temperature`` (0.05) of the model's config,
weights and NaN-aware averaging from :mod:`omicsclip.index.impute`.

Run (after a transfer run that kept its files)::

    .venv/bin/python bench/transfer.py --pairs pbmc10k:eccite --pooled-with pbmc5p --skip-totalvi --workdir W
    .venv/bin/python bench/pooled_diagnose.py --workdir W --pairs pbmc10k:eccite
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from transfer import DATASETS, RESULTS, SHARED, pair_errors  # noqa: E402
from transfer_metrics import protein_pearson  # noqa: E402
from transfer_peers import load_dataset, prepare_pair  # noqa: E402

from omicsclip.index.impute import knn_impute  # noqa: E402  (exact search, as `omicsclip query` imputes)
from omicsclip.index.refprotein import reference_protein  # noqa: E402


def per_protein(query, ref, values, k, temperature):
    """Each protein from the k nearest cells among those that measured it."""
    out = np.full((len(query), values.shape[1]), np.nan, np.float32)
    for j in range(values.shape[1]):
        has = np.isfinite(values[:, j])
        out[:, j] = knn_impute(query, ref[has], values[has][:, [j]], k=k, temperature=temperature)[:, 0]
    return out


def zscored(values: np.ndarray, datasets: np.ndarray) -> np.ndarray:
    """Each dataset's values standardised per protein (NaN kept)."""
    z = np.array(values, np.float64)
    for d in np.unique(datasets):
        m = datasets == d
        with warnings.catch_warnings():  # a protein outside this dataset's panel: all NaN, stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mu, sd = np.nanmean(z[m], 0), np.nanstd(z[m], 0)
        z[m] = (z[m] - mu) / np.where(sd > 0, sd, 1.0)
    return z


class Side:
    """One kept omicsclip run of a pair: model, reference embeddings (index order), reference CLR, query RNA."""

    def __init__(self, folder: Path) -> None:
        import anndata as ad

        from omicsclip.model import load_model
        from omicsclip.model.embed import open_embeddings

        self.model = load_model(folder / "model")
        emb = open_embeddings(folder / "emb.zarr")
        ids = pd.read_csv(folder / "index" / "cell_ids.tsv", sep="\t").iloc[:, 0].astype(str)
        pos = pd.Index(emb.obs.index.astype(str)).get_indexer(ids)
        self.ref = emb.matrix("rna")[pos]
        obs = emb.obs.iloc[pos]
        self.datasets = obs["dataset"].astype(str).to_numpy() if "dataset" in obs.columns else None
        meta = json.loads((folder / "index" / "meta.json").read_text())
        self.proteins = [str(p) for p in (meta.get("proteins") or self.model.proteins)]
        # every dataset's own CLR (the index keeps each shared protein in its source dataset only: sources)
        store = next(f for f in (folder / "model.pool.zarr", folder / "ref.zarr") if f.exists())
        self.values = reference_protein(store, pd.Index(ids), self.proteins)[0]
        self.sources = (meta["source"].get("protein_sources") or {}).get("sources", {})
        q = ad.read_h5ad(folder / "query_rna.h5ad")
        self.query_rna, self.query_genes = q.X, [str(g) for g in q.var_names]
        cfg = self.model.config["query"]
        self.k, self.temperature = int(cfg["impute_k"]), float(cfg["temperature"])

    def embed_query(self) -> np.ndarray:
        """The query's RNA embedding, every gene it has."""
        return self.model.embed(rna=self.query_rna, genes=self.query_genes)["rna"]

    def embed_query_with(self, genes: set[str]) -> np.ndarray:
        """The query's RNA embedding from only ``genes`` of its genes; the others enter as unmeasured (the training
        mean), exactly as a gene a training dataset did not measure."""
        import torch

        from omicsclip.model.alignment import align_rna

        st, model = self.model.state, self.model
        counts, lib, rep = align_rna(self.query_rna, self.query_genes, st)
        keep = torch.as_tensor([g in genes and g not in set(rep.missing) for g in st.genes], dtype=torch.float32)
        out = []
        with torch.no_grad():
            for s in range(0, counts.shape[0], 4096):
                ch = counts[s:s + 4096]
                row = torch.as_tensor(np.repeat(np.arange(ch.shape[0]), np.diff(ch.indptr)))
                x = model.pre.rna_sparse(row, torch.as_tensor(ch.indices.astype(np.int64)), torch.as_tensor(ch.data),
                                         torch.as_tensor(lib[s:s + 4096]), ch.shape[0], keep)
                out.append(model.model.encode_rna(x).numpy())
        return np.concatenate(out)


def diagnose(key: str, workdir: Path) -> dict:
    ref_key, query_key = key.split(":")
    paths = {k: SHARED / v / f"{v}.h5ad" for k, v in DATASETS.items()}
    ref_data = load_dataset(paths[ref_key])
    pair = prepare_pair(ref_data, load_dataset(paths[query_key]), ref_key, query_key)
    root = workdir / key.replace(":", "_")
    pooled_dirs = sorted(root.glob("omicsclip_pooled_*"))
    if not (root / "omicsclip").is_dir() or not pooled_dirs:
        sys.exit(f"bench/pooled_diagnose.py: {root} lacks omicsclip/ or omicsclip_pooled_*/ (run bench/transfer.py "
                 "--pooled-with ... --workdir first)")
    scores: dict[str, dict] = {}

    def score(name: str, side: Side, pred: np.ndarray) -> None:
        cols = pd.Index(side.proteins).get_indexer(pair.proteins)
        scores[name] = protein_pearson(pred[:, cols], pair.query_protein.to_numpy(), pair.proteins)

    single = Side(root / "omicsclip")
    score("single", single, knn_impute(single.embed_query(), single.ref, single.values, k=single.k,
                                               temperature=single.temperature))
    pooled = Side(pooled_dirs[0])
    q = pooled.embed_query()
    k, t = pooled.k, pooled.temperature
    score("pooled", pooled, knn_impute(q, pooled.ref, pooled.values, k=k, temperature=t))
    own = np.char.startswith(pooled.datasets.astype(str), "ref0_")  # bench/transfer.py names the pair's reference ref0
    score("pooled_own_cells", pooled, knn_impute(q, pooled.ref[own], pooled.values[own], k=k, temperature=t))
    score("pooled_per_protein", pooled, per_protein(q, pooled.ref, pooled.values, k, t))
    sourced = pooled.values.copy()  # what `omicsclip query` does (index.protein_sources: best)
    for j, p in enumerate(pooled.proteins):
        if p in pooled.sources:
            sourced[pooled.datasets != pooled.sources[p], j] = np.nan
    score("pooled_sourced", pooled, per_protein(q, pooled.ref, sourced, k, t))
    score("pooled_zscore", pooled, knn_impute(q, pooled.ref, zscored(pooled.values, pooled.datasets), k=k, temperature=t))
    own_genes = set(map(str, ref_data.var_names))
    q_own = pooled.embed_query_with(own_genes)
    score("pooled_own_panel", pooled, knn_impute(q_own, pooled.ref[own], pooled.values[own], k=k, temperature=t))
    return {"pooled_with": pooled_dirs[0].name.removeprefix("omicsclip_pooled_"), "proteins": pair.proteins,
            "n_query": int(len(pair.query_protein)), "scores": scores}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="bench/transfer.py's --workdir")
    ap.add_argument("--pairs", nargs="+", required=True)
    ap.add_argument("--out", type=Path, default=RESULTS / "pooled_diagnose.json")
    args = ap.parse_args(argv)
    bad = pair_errors(args.pairs, DATASETS)
    if bad:
        sys.exit(f"bench/pooled_diagnose.py: {bad}")
    result = {"workdir": str(args.workdir), "pairs": {}}
    for key in args.pairs:
        result["pairs"][key] = diagnose(key, args.workdir)
        row = {n: s["mean_pearson"] for n, s in result["pairs"][key]["scores"].items()}
        print(key, " ".join(f"{n}={v:.3f}" if v is not None else f"{n}=None" for n, v in row.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
