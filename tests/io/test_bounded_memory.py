"""Larger-than-memory inputs stream through open_anndata under a hard memory limit; a whole load does not fit.

Each case runs ``bench/lazy_memory.py --child`` in a fresh interpreter that measures its own data segment after
the imports and then sets ``RLIMIT_DATA`` to that plus ``HEADROOM_MB``; the ``.h5ad`` holds about four times
``HEADROOM_MB`` of CSR counts.
"""

from __future__ import annotations

import sys

import pytest
from conftest import load_bench

HEADROOM_MB = 160  # streaming needs ~70-100 MB above the imports (chunks, obs, protein frame, indptr)
N_GENES, NNZ = 4000, 800  # 6.4 kB of CSR (float32 data + int32 indices) per cell
CHUNK = 2000

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                   reason="RLIMIT_DATA and /proc/self/status are Linux's")]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    bench = load_bench("lazy_memory")
    n_cells = 4 * HEADROOM_MB * 2**20 // (NNZ * 8)
    path = tmp_path_factory.mktemp("big") / "big.h5ad"
    truth = bench.write_counts_h5ad(path, n_cells, N_GENES, NNZ, n_proteins=10)
    assert truth["x_mb"] >= 4 * HEADROOM_MB - 1
    yield bench, path, truth
    path.unlink()


@pytest.mark.parametrize("case", ["backed", "dask"])
def test_streams_larger_than_the_limit(big, case):
    bench, path, truth = big
    res = bench.run_case(case, path, chunk=CHUNK, limit_mb=HEADROOM_MB, timeout=120)
    assert "error" not in res, res
    assert res["rlimit_data_mb"] - res["vmdata_after_imports_mb"] == pytest.approx(HEADROOM_MB, abs=1)
    assert (res["n_cells"], res["rna_sum"], res["prot_sum"]) == (truth["n_cells"], truth["rna_sum"],
                                                                  truth["prot_sum"])
    assert res["chunk_rows"] == CHUNK  # dask: the array's own row blocks
    assert res["peak_rss_mb"] - res["rss_after_imports_mb"] < HEADROOM_MB < truth["x_mb"] / 3


def test_loading_it_whole_fails_under_the_same_limit(big):
    bench, path, _ = big
    res = bench.run_case("sparse", path, chunk=CHUNK, limit_mb=HEADROOM_MB, timeout=120)
    assert res.get("returncode", 0) != 0, res
    assert res["memory_error"], res
