"""Every .h5ad in ../shared/data ingests with counts identical to the source."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_h5ad

from omicsclip.io.features import DEFAULT_ISOTYPE_PATTERNS, match_names
from omicsclip.io.ingest import ingest
from omicsclip.io.store import read_store

DATASETS = ["pbmc10k_protein_v3", "bremsc_inhouse_pbmc", "eccite_pbmc_citefuse", "pbmc_5prime_totalseqc_10x"]


@pytest.mark.realdata
@pytest.mark.parametrize("name", DATASETS)
def test_shared_h5ad_ingests_identically(name, tmp_path):
    import anndata as ad

    path = shared_h5ad(name)
    a = ad.read_h5ad(path)
    dup = a.var_names.duplicated().any()  # bremsc and the 5' set have duplicated gene symbols
    out = ingest([path], tmp_path / f"{name}.zarr", make_unique=bool(dup))
    d = read_store(out)

    assert d.barcodes == list(a.obs_names)
    assert d.rna.shape == a.shape
    assert (d.rna != sp.csr_matrix(a.X)).nnz == 0
    prot = a.obsm["protein"]
    iso = match_names(list(prot.columns), DEFAULT_ISOTYPE_PATTERNS)
    kept = [c for c, i in zip(prot.columns, iso, strict=True) if not i]
    assert list(d.proteins["original_name"]) == kept  # the store's names are canonical (io/protein_names.py)
    np.testing.assert_array_equal(d.prot, prot[kept].to_numpy(dtype=np.float32))
    if "cell_type" in a.obs:
        assert list(d.obs["cell_type"].astype(str)) == list(a.obs["cell_type"].astype(str))
    if iso.any():
        np.testing.assert_array_equal(d.obs["isotype_counts"], prot.loc[:, iso].to_numpy().sum(axis=1))
    if "hto" in a.obsm:  # eccite: hashtags are sample barcodes, not surface markers -> obs columns
        for col in a.obsm["hto"].columns:
            np.testing.assert_array_equal(d.obs[f"hto_{col}"], a.obsm["hto"][col].to_numpy())
            assert col not in d.protein_names
    if name == "eccite_pbmc_citefuse":
        assert len(kept) == 47
        assert {"IgG1", "IgG2a"} == set(prot.columns[iso])
