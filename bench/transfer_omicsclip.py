"""omicsclip's side of bench/transfer.py: the CLI path a user takes to map another lab's RNA onto a reference.

``omicsclip ingest`` the reference → ``omicsclip train --genes-from QUERY`` (the genes both share; no gene list
edited by hand) → ``embed`` → ``index`` (labels ``cell_type``) → ``query`` the other lab's RNA (all of its genes, no
protein) → the imputed protein (``imputed_protein.h5ad``, CLR over the reference panel), transferred labels
(``labels.tsv``; ``unknown`` never transferred) and mapping scores (``mapping.tsv``). Default configuration,
``train.seed`` = the bench seed; nothing is tuned on the query.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

EXE = [sys.executable, "-m", "omicsclip.cli.main"]


def _run(log: Path, *args: object) -> None:
    """Run one omicsclip command, output appended to ``log``; raise with the log's tail when it fails."""
    with open(log, "a") as fh:
        fh.write(f"$ omicsclip {' '.join(map(str, args))}\n")
        fh.flush()
        rc = subprocess.run([*EXE, *map(str, args)], stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    if rc:
        tail = "".join(log.read_text().splitlines(True)[-12:])
        raise RuntimeError(f"omicsclip {args[0]} failed ({rc}); {log}:\n{tail}")


def query_rna(log: Path, query: Path, model: Path, index: Path, out: Path, overrides: list[str]) -> None:
    """``omicsclip query`` a file's RNA alone against a model and index into ``out`` (replaced)."""
    _run(log, "query", query, "--model", model, "--index", index, "--out", out, "--modality", "rna", "--no-tsv",
         "--overwrite", *overrides)


def read_imputed(qdir: Path, barcodes: pd.Index) -> pd.DataFrame:
    """A query folder's imputed protein (CLR over the reference panel), rows in ``barcodes`` order.

    Raises ``ValueError`` when some of ``barcodes`` are not its cells (the output of another query).
    """
    import anndata as ad

    imp = ad.read_h5ad(qdir / "imputed_protein.h5ad")
    frame = pd.DataFrame(np.asarray(imp.X), index=imp.obs_names.astype(str), columns=[str(p) for p in imp.var_names])
    absent = pd.Index(barcodes).astype(str).difference(frame.index)
    if len(absent):
        raise ValueError(f"{qdir}: {len(absent)} of the {len(barcodes)} query cells are not in its imputed protein "
                         f"(e.g. {absent[0]}): the output of another query")
    return frame.reindex(barcodes)


def rna_only(query_h5ad: Path, out: Path) -> pd.Index:
    """Write the query's RNA alone (every gene it has, names made unique) as ``out``; return its barcodes."""
    import warnings

    import anndata as ad

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        q = ad.read_h5ad(query_h5ad)
    a = ad.AnnData(X=q.X, obs=pd.DataFrame(index=q.obs_names.astype(str)), var=pd.DataFrame(index=q.var_names))
    a.var_names_make_unique()
    a.write_h5ad(out)
    return a.obs_names


def omicsclip_method(ref_h5ad: Path | list[Path], query_h5ad: Path, shared_genes: list[str], workdir: Path,
                     seed: int, sets: tuple[str, ...] = ()) -> dict:
    """Run omicsclip on a pair and return the :func:`transfer.score_output` contract, rows in query order.

    ``ref_h5ad`` may list several datasets: a pooled reference (``omicsclip train A.zarr B.zarr`` pools them on
    the union of their genes and panels). ``shared_genes`` is not used: ``--genes-from`` finds the shared genes
    itself, as a user would let it.
    """
    del shared_genes
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "omicsclip.log"
    t0 = time.perf_counter()
    store, model, emb, index, qdir = (workdir / n for n in ("ref.zarr", "model", "emb.zarr", "index", "query"))
    query = workdir / "query_rna.h5ad"
    barcodes = rna_only(query_h5ad, query)
    overrides = [x for s in (f"train.seed={seed}", *sets) for x in ("--set", s)]
    refs = list(ref_h5ad) if isinstance(ref_h5ad, (list, tuple)) else [ref_h5ad]
    stores = [store] if len(refs) == 1 else [workdir / f"ref{i}_{Path(r).stem}.zarr" for i, r in enumerate(refs)]
    for r, s in zip(refs, stores, strict=True):
        _run(log, "ingest", r, "--out", s, "--make-unique", "--overwrite")
    _run(log, "train", *stores, "--out", model, "--genes-from", query, "--overwrite", *overrides)
    if len(refs) > 1:
        store = model.with_name(model.name + ".pool.zarr")  # where train pooled them
    _run(log, "embed", store, "--model", model, "--out", emb, "--overwrite")
    _run(log, "index", emb, "--out", index, "--set", "index.label_key=cell_type", "--overwrite")
    query_rna(log, query, model, index, qdir, overrides)
    protein = read_imputed(qdir, barcodes)
    mapping = pd.read_csv(qdir / "mapping.tsv", sep="\t").set_index("query_id")
    mapping.index = mapping.index.astype(str)
    lab = None
    if (qdir / "labels.tsv").exists():  # a reference without cell-type labels transfers none
        labels = pd.read_csv(qdir / "labels.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("query_id")
        labels.index = labels.index.astype(str)
        lab = labels["cell_type"].reindex(barcodes).replace("", None).to_numpy(dtype=object)
    return {"protein": protein, "labels": lab, "mapping_score": mapping["mapping_score"].reindex(barcodes).to_numpy(),
            "seconds": time.perf_counter() - t0}
