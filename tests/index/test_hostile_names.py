"""End to end with hostile names (issue #12, case 5): every TSV written stays one record per line and round-trips.

Cell ids, cell-type labels and batch names hold tabs, newlines, carriage returns, quotes, backslashes, ``NA``,
control characters and unicode. ingest -> train (tiny) -> embed -> index -> query, then finetune -> predict; every
``.tsv`` any stage wrote must read with ``pandas.read_csv(sep="\\t")`` into the expected shape, have rows + 1 lines
(``wc -l``) and give the original names back through :func:`omicsclip.io.tsv.read_tsv`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from typer.testing import CliRunner

from omicsclip.cli.main import app
from omicsclip.io.tsv import read_tsv

runner = CliRunner()
SETS = [x for s in [*TINY, "train.epochs=2", "model.members=1", "finetune.epochs=20", "finetune.ensemble=2",
                    "finetune.mc_samples=2"] for x in ("--set", s)]

ID_PARTS = ["tab\tid", "new\nline", "cr\rid", 'quo"te', "'single'", "back\\slash", "\\t-literal", "NA", "nan",
            "ünï©ødé-细胞-✓", "bell\x07", "nel\x85", " padded ", "# hash", "a,b;c"]
TYPES = ["T\tcell", "B\ncell", 'Mono "classical"', "NK\\killer ✓"]
BATCHES = ["batch\t1", "b\r\n2"]


def _hostile_ids(n: int, prefix: str) -> list[str]:
    ids = [f"{ID_PARTS[i % len(ID_PARTS)]}{prefix}{i}" for i in range(n)]
    ids[0] = "NA"  # exactly NA: pandas' default reader turns it into a missing value
    return ids


def _invoke(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args[0]}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res


def _check_tsv(path, n_rows: int, columns: list[str] | None = None) -> pd.DataFrame:
    """Shape through pandas' plain reader, one line per record, and the original text through read_tsv."""
    raw = path.read_bytes()
    plain = pd.read_csv(path, sep="\t")
    assert len(plain) == n_rows, f"{path.name}: {len(plain)} rows, expected {n_rows}"
    lines = raw.count(b"\n")
    assert lines == n_rows + 1, f"{path.name}: {lines} lines for {n_rows} rows"
    assert b"\r" not in raw, f"{path.name}: carriage return in the file"
    assert len({line.count(b"\t") for line in raw.split(b"\n")[:-1]}) == 1, f"{path.name}: ragged lines"
    back = read_tsv(path, dtype=str)
    assert len(back) == n_rows
    if columns is not None:
        assert list(back.columns) == columns, f"{path.name}: columns {list(back.columns)}"
    assert plain.shape == back.shape
    return back


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    from omicsclip.io.synthetic import make_synthetic

    tmp = tmp_path_factory.mktemp("hostile")
    data = make_synthetic(n_cells=300, n_genes=80, n_proteins=6, n_types=4, n_batches=2, seed=0).to_anndata()
    data.obs_names = _hostile_ids(data.n_obs, "#ref")
    data.obsm["protein"].index = data.obs_names
    types = {t: TYPES[i] for i, t in enumerate(sorted(data.obs["cell_type"].astype(str).unique()))}
    data.obs["cell_type"] = pd.Categorical(data.obs["cell_type"].astype(str).map(types))
    batches = {b: BATCHES[i] for i, b in enumerate(sorted(data.obs["batch"].astype(str).unique()))}
    data.obs["batch"] = pd.Categorical(data.obs["batch"].astype(str).map(batches))
    data.write_h5ad(tmp / "ref.h5ad")
    new = make_synthetic(n_cells=40, n_genes=80, n_proteins=6, n_types=4, seed=1).to_anndata()
    qids = _hostile_ids(new.n_obs, "#query")
    ad.AnnData(X=new.X, obs=pd.DataFrame(index=qids), var=new.var).write_h5ad(tmp / "query_rna.h5ad")
    both = ad.AnnData(X=new.X, obs=pd.DataFrame(index=qids), var=new.var)
    both.obsm["protein"] = pd.DataFrame(new.obsm["protein"].to_numpy(), index=qids,
                                        columns=new.obsm["protein"].columns)
    both.write_h5ad(tmp / "query_both.h5ad")

    _invoke(["ingest", tmp / "ref.h5ad", "--out", tmp / "cells.zarr"])
    _invoke(["train", tmp / "cells.zarr", "--out", tmp / "model", *SETS])
    _invoke(["embed", tmp / "cells.zarr", "--model", tmp / "model", "--out", tmp / "emb.zarr"])
    _invoke(["index", tmp / "emb.zarr", "--out", tmp / "index", "--kind", "flat"])
    _invoke(["query", tmp / "query_rna.h5ad", "--model", tmp / "model", "--index", tmp / "index",
             "--out", tmp / "res", "--k", "3"])
    return {"tmp": tmp, "ids": list(data.obs_names), "qids": qids, "types": TYPES, "n": data.n_obs}


def test_store_keeps_hostile_names(hostile):
    from omicsclip.io.store import read_store

    store = read_store(hostile["tmp"] / "cells.zarr")
    assert list(store.obs.index) == hostile["ids"]
    assert set(store.obs["cell_type"].astype(str)) == set(TYPES)


def test_query_tables_round_trip(hostile):
    res = hostile["tmp"] / "res"
    nb = _check_tsv(res / "neighbours.tsv", 40 * 2 * 3,
                    ["query_id", "query_modality", "index_modality", "rank", "reference_id", "similarity"])
    assert nb["query_id"].drop_duplicates().tolist() == hostile["qids"]
    assert set(nb["reference_id"]) <= set(hostile["ids"])
    parquet = pd.read_parquet(res / "neighbours.parquet")
    assert nb["query_id"].tolist() == parquet["query_id"].tolist()
    assert nb["reference_id"].tolist() == parquet["reference_id"].tolist()
    np.testing.assert_allclose(nb["similarity"].astype(float), parquet["similarity"], rtol=1e-5, atol=1e-6)

    classes = sorted(TYPES)
    labels = _check_tsv(res / "labels.tsv", 40, ["query_id", "query_modality", "cell_type",
                                                  "cell_type_vote_fraction", "cell_type_voting_weight",
                                                  *[f"cell_type_fraction_{c}" for c in classes]])
    assert labels["query_id"].tolist() == hostile["qids"]
    assert set(labels["cell_type"]) <= {*TYPES, ""}
    summary = json.loads((res / "summary.json").read_text())
    assert summary["label_keys"] == ["cell_type"]


def test_index_cell_ids_round_trip(hostile):
    ids = _check_tsv(hostile["tmp"] / "index" / "cell_ids.tsv", hostile["n"], ["cell_id"])
    assert ids["cell_id"].tolist() == hostile["ids"]


def test_model_split_round_trips(hostile):
    split = _check_tsv(hostile["tmp"] / "model" / "split.tsv", hostile["n"])
    assert split.iloc[:, 0].tolist() == hostile["ids"]
    assert set(split.iloc[:, 1]) <= {"train", "val", "test"}


def test_finetune_then_predict_round_trips(hostile):
    tmp = hostile["tmp"]
    _invoke(["finetune", tmp / "emb.zarr", "--out", tmp / "head", "--labels", "cell_type", *SETS])
    _invoke(["predict", tmp / "query_both.h5ad", "--model", tmp / "model", "--head", tmp / "head",
             "--out", tmp / "pred.tsv"])
    pred = _check_tsv(tmp / "pred.tsv", 40)
    assert pred.iloc[:, 0].tolist() == hostile["qids"]
    assert set(pred["label"]) <= set(TYPES)


def test_every_tsv_written_is_one_record_per_line(hostile):
    """Whatever TSV any stage wrote (including ones added later), pandas and wc agree on its rows."""
    found = sorted(hostile["tmp"].rglob("*.tsv"))
    assert {p.name for p in found} >= {"neighbours.tsv", "labels.tsv", "cell_ids.tsv", "split.tsv"}
    for path in found:
        plain = pd.read_csv(path, sep="\t")
        assert path.read_bytes().count(b"\n") == len(plain) + 1, path


@pytest.mark.slow
def test_query_stderr_has_no_loader_noise(hostile):
    """Case 9: faiss' loader must not print ModuleNotFoundError lines (it is not an error) on a query."""
    tmp = hostile["tmp"]
    exe = shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")
    r = subprocess.run([exe, "query", tmp / "query_rna.h5ad", "--model", tmp / "model", "--index", tmp / "index",
                        "--out", tmp / "res_subprocess", "--k", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for noise in ("swigfaiss", "ModuleNotFoundError", "faiss.loader", "Could not load library"):
        assert noise not in r.stderr, r.stderr
