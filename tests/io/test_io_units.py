"""Small pieces: name handling, format detection, value checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from omicsclip.errors import InputError
from omicsclip.io.features import DEFAULT_ISOTYPE_PATTERNS, check_unique_features, match_names
from omicsclip.io.formats import detect_format
from omicsclip.io.validate import check_counts


def _unique(names):
    return list(check_unique_features(pd.Index(names), path="f.h5ad", what="gene", unique=True))


def test_make_unique_like_anndata():
    import anndata as ad

    with pytest.warns(UserWarning, match="Suffix used"):  # anndata warns when a suffix is already a name
        assert _unique(["A", "B", "A", "A", "A-1"]) == ["A", "B", "A-2", "A-3", "A-1"]
    assert _unique(["x", "y"]) == ["x", "y"]
    assert _unique(["g", "g", "h", "g"]) == ["g", "g-1", "h", "g-2"]
    with pytest.warns(UserWarning, match="not unique"):
        a = ad.AnnData(np.zeros((1, 4)), var=pd.DataFrame(index=["g", "g", "h", "g"]))
    a.var_names_make_unique()
    assert _unique(["g", "g", "h", "g"]) == list(a.var_names)
    with pytest.raises(InputError, match=r"f.h5ad: 1 duplicate gene names \(e.g. 'g'\); pass --make-unique"):
        check_unique_features(pd.Index(["g", "g"]), path="f.h5ad", what="gene", unique=False)


def test_isotype_patterns_on_real_panel_names():
    names = ["CD3_TotalSeqB", "IgG1_control_TotalSeqB", "Mouse_IgG2a", "Rat-IgG2b-isotype", "IgG2a", "CD4",
             "HLA-DR", "mouse IgG1 kappa Isotype Ctrl"]
    assert list(match_names(names, DEFAULT_ISOTYPE_PATTERNS)) == [False, True, True, True, True, False, False,
                                                                  True]


def test_detect_format_combinations(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.tsv.gz"
    a.write_text("x,y\n")
    b.write_bytes(b"")
    assert detect_format([a, b]) == "csv"
    h = tmp_path / "c.h5ad"
    h.write_bytes(b"")
    with pytest.raises(InputError, match="two inputs of formats h5ad and csv"):
        detect_format([h, a])
    with pytest.raises(InputError, match="takes one input"):
        detect_format([a, b], "h5mu")
    with pytest.raises(InputError, match="no such file"):
        detect_format([tmp_path / "missing.h5ad"])


def test_check_counts_messages():
    m = sp.csr_matrix(np.array([[1, 0], [0, 2.5]], dtype=np.float32))
    kw = dict(path="f.h5ad", what="RNA", barcodes=pd.Index(["c1", "c2"]), features=pd.Index(["g1", "g2"]))
    with pytest.raises(InputError, match="not integer counts \\(e.g. 2.5 at cell 'c2', feature 'g2'\\)"):
        check_counts(m, allow_normalized=False, **kw)
    check_counts(m, allow_normalized=True, **kw)
    m.data[0] = -1
    with pytest.raises(InputError, match="1 negative values"):
        check_counts(m, allow_normalized=True, **kw)
    m.data[0] = np.nan
    with pytest.raises(InputError, match="NaN/inf"):
        check_counts(m, allow_normalized=True, **kw)


def test_reader_options_from_config_section():
    from omicsclip.config import load_config
    from omicsclip.io.readers import open_input, reader_options

    opts = reader_options(load_config(None, ["ingest.make_unique=true"])["ingest"])
    assert opts["make_unique"] is True
    assert "layer" not in opts
    assert "min_counts_rna" not in opts
    import inspect

    assert set(opts) <= set(inspect.signature(open_input).parameters)
