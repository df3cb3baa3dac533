"""The notebook API's input path gives proteins the names ingest gives a store, and matches a model's names."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from omicsclip.api._inputs import opened, resolve_config


def _adata(names):
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(20)])
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (20, 10)).astype(np.float32)), obs=obs,
                   var=pd.DataFrame(index=[f"g{i}" for i in range(10)]))
    a.obsm["protein"] = pd.DataFrame(rng.poisson(5, (20, len(names))).astype(np.float32), index=obs.index,
                                     columns=names)
    return a


def test_open_data_canonical_names_and_model_matching(tmp_path):
    cfg = resolve_config()
    a = _adata(["PD-1", "CD8a_TotalSeqB", "CD4"])
    with opened(a, ingest=cfg["ingest"]) as src:
        assert src.proteins == ["CD279", "CD8a", "CD4"]
    with opened(a, ingest=cfg["ingest"], model_proteins=["CD8", "PD1", "CD4"]) as src:
        assert src.proteins == ["PD1", "CD8", "CD4"]
        assert next(src.iter_chunks(50)).protein_names == ["PD1", "CD8", "CD4"]
    with opened(a, ingest={**cfg["ingest"], "harmonise_proteins": False}) as src:
        assert src.proteins == ["PD-1", "CD8a_TotalSeqB", "CD4"]
    aliases = tmp_path / "ours.csv"
    aliases.write_text("CD4,CD4-custom\n")
    with opened(a, ingest=cfg["ingest"], protein_aliases=str(aliases)) as src:
        assert src.proteins == ["CD279", "CD8a", "CD4-custom"]
