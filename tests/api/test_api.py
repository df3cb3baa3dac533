"""The notebook API (`import omicsclip as oc`): MuData / AnnData+obsm / (rna, prot) pair -> model, embeddings,
reference query, head predictions and plots; the same results as the CLI's functions."""

from __future__ import annotations

import pydoc
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import TINY

import omicsclip as oc
from omicsclip.conventions import EMBEDDING_KEYS

HEAD_CFG = [*TINY, "finetune.epochs=30", "finetune.ensemble=2"]


def _synthetic(n_cells=300, seed=0):
    from omicsclip.io.synthetic import make_synthetic

    return make_synthetic(n_cells=n_cells, n_genes=80, n_proteins=6, n_types=4, seed=seed)


def _forms(data):
    """The same cells as a MuData, an AnnData with protein in obsm and an (rna, prot) pair."""
    import anndata as ad
    import mudata as md

    obs = data.obs.copy()
    rna = ad.AnnData(X=data.rna.copy(), obs=obs.copy(), var=data.genes.copy())
    prot = ad.AnnData(X=data.prot.copy(), obs=obs.copy(), var=data.proteins.copy())
    mdata = md.MuData({"rna": rna.copy(), "prot": prot.copy()})
    for col in obs.columns:
        mdata.obs[col] = obs[col].to_numpy()
    return {"mudata": mdata, "obsm": data.to_anndata(), "pair": (rna, prot)}


@pytest.fixture(scope="module")
def data():
    return _synthetic()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("api") / "model"
    model = oc.train_model(_forms(data)["mudata"], out, config=TINY)
    return model


def _rna_only(data):
    import anndata as ad

    return ad.AnnData(X=data.rna.copy(), obs=data.obs.copy(), var=data.genes.copy())


def test_import_is_lazy():
    code = "import sys, omicsclip; print('torch' in sys.modules, 'omicsclip.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_train_writes_the_model_folder_and_store(trained, data):
    assert (trained.path / "model.json").exists()
    assert trained.store == oc.api.default_store(trained.path).resolve()
    assert trained.store.exists()
    assert len(trained.history) > 0
    assert set(trained.split.index) == set(data.barcodes)
    assert "OmicsClipModel" in repr(trained)


@pytest.mark.parametrize("form", ["obsm", "pair"])
def test_train_from_other_forms(tmp_path, data, form):
    model = oc.train_model(_forms(data)[form], tmp_path / "m", config=TINY)
    assert (tmp_path / "m_store.zarr").exists()
    assert model.proteins
    assert model.genes


def test_train_refuses_an_existing_store(tmp_path, data):
    from omicsclip.errors import InputError

    (tmp_path / "m_store.zarr").mkdir()
    with pytest.raises(InputError, match="already exists"):
        oc.train_model(_forms(data)["obsm"], tmp_path / "m", config=TINY)


def test_embed_matches_the_cli(tmp_path, trained, data):
    import anndata as ad

    from omicsclip.model.embed import embed_store

    mdata = _forms(data)["mudata"]
    emb = trained.embed(mdata)
    assert set(emb) == {"rna", "prot", "joint"}
    ref = ad.read_zarr(embed_store(trained.store, trained.path, tmp_path / "emb.zarr"))
    order = pd.Index(ref.obs_names).get_indexer(pd.Index(mdata.obs_names))
    for mod, key in EMBEDDING_KEYS.items():
        np.testing.assert_allclose(mdata.obsm[key], ref.obsm[key][order], atol=1e-6)
        np.testing.assert_allclose(emb[mod], ref.obsm[key][order], atol=1e-6)


@pytest.mark.parametrize("form", ["obsm", "pair"])
def test_embed_other_forms(trained, data, form):
    obj = _forms(data)[form]
    emb = trained.embed(obj, key_added="X_oc")
    expected = trained.embed(_forms(data)["mudata"], key_added=None)
    for target in (obj if isinstance(obj, tuple) else (obj,)):
        for mod in ("rna", "prot", "joint"):
            np.testing.assert_allclose(target.obsm[f"X_oc_{mod}"], expected[mod], atol=1e-6)
    np.testing.assert_allclose(emb["joint"], expected["joint"], atol=1e-6)


def test_embed_one_modality(trained, data):
    adata = _rna_only(data)
    emb = trained.embed(adata)
    assert set(emb) == {"rna"}
    assert adata.obsm["X_omicsclip_rna"].shape == (data.n_cells, trained.trained.embed_dim)


@pytest.mark.parametrize("form", ["mudata", "obsm", "pair"])
def test_build_index_and_query(trained, data, form):
    ref = oc.build_index(_forms(data)[form], trained)
    assert ref.n_cells == data.n_cells
    assert ref.label_keys == ["cell_type"]
    res = ref.query(_rna_only(data), k=5)
    assert res.n_obs == data.n_cells
    assert list(res.var_names) == trained.proteins
    assert np.isfinite(res.X).all()
    assert {"confidence", "top_similarity", "cell_type", "cell_type_vote_fraction"} <= set(res.obs.columns)
    acc = (res.obs["cell_type"].to_numpy() == data.obs["cell_type"].astype(str).to_numpy()).mean()
    assert acc > 0.5
    nb = res.uns["neighbours"]
    assert set(nb["index_modality"]) == {"rna", "prot"}
    assert nb["rank"].max() == 5
    fig = oc.pl.imputed_vs_measured(res, _forms(data)[form])
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert len(titles) == len(trained.proteins)  # one panel per protein with its r, whatever form holds the
    # measured protein (an AnnData's RNA in X is not it): the same as from the protein of a MuData
    assert titles == [a.get_title() for a in oc.pl.imputed_vs_measured(res, _forms(data)["mudata"]).axes
                      if a.get_title()]


def test_index_query_head_predict_in_memory_write_nothing(tmp_path, monkeypatch, trained, data):
    """MuData -> index -> query -> head -> predict with no file written: tempfile refuses, and the temp dir, cwd
    and model folder stay as they were."""
    import tempfile

    mdata = _forms(data)["mudata"]
    tmpdir, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmpdir.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.chdir(cwd)

    def refuse(*args, **kwargs):
        raise AssertionError("build_index made a temporary file or folder")

    for name in ("mkdtemp", "mkstemp", "TemporaryDirectory", "NamedTemporaryFile", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    model_files = sorted(p.relative_to(trained.path.parent) for p in trained.path.parent.rglob("*"))
    ref = oc.build_index(mdata, trained)
    assert ref.path is None
    assert "in memory" in repr(ref)
    assert list(tmpdir.iterdir()) == []
    assert list(cwd.iterdir()) == []
    assert sorted(p.relative_to(trained.path.parent) for p in trained.path.parent.rglob("*")) == model_files
    res = ref.query(_rna_only(data), k=5)
    assert res.n_obs == data.n_cells
    head = oc.fit_head(mdata, trained, labels_key="cell_type", fusion="gated", config=HEAD_CFG)
    assert head.path is None
    assert "in memory" in repr(head)
    pred = head.predict(mdata)
    assert len(pred) == mdata.n_obs
    assert set(pred["label"]) <= set(head.classes)
    assert list(tmpdir.iterdir()) == []
    assert list(cwd.iterdir()) == []
    assert sorted(p.relative_to(trained.path.parent) for p in trained.path.parent.rglob("*")) == model_files
    saved = head.save(tmp_path / "head")
    assert saved == head.path
    assert (saved / "head.json").exists()
    again = oc.load_head(saved, trained)
    pd.testing.assert_frame_equal(again.predict(mdata, key_added=None), head.predict(mdata, key_added=None))


def test_index_save_and_load(tmp_path, trained, data):
    import anndata as ad

    from omicsclip.errors import InputError

    ref = oc.build_index(_forms(data)["obsm"], trained)
    before = ref.query(_rna_only(data), k=5)
    saved = ref.save(tmp_path / "index")
    assert saved == ref.path == tmp_path / "index"
    assert (saved / "meta.json").exists()
    with pytest.raises(InputError, match="already exists"):
        ref.save(saved)
    again = oc.load_index(saved, trained)
    assert again.path == saved
    after = again.query(_rna_only(data), k=5)
    np.testing.assert_array_equal(after.X, before.X)
    pd.testing.assert_frame_equal(after.obs, before.obs)
    pd.testing.assert_frame_equal(after.uns["neighbours"], before.uns["neighbours"])
    assert isinstance(after, ad.AnnData)
    res = again.query(_forms(data)["obsm"])
    assert res.n_vars == 0
    assert "cell_type" in res.obs


def test_index_written_to_out_is_the_cli_layout(tmp_path, trained, data):
    from omicsclip.index.query import query

    oc.build_index(_forms(data)["mudata"], trained, out=tmp_path / "idx")
    res = query(_synthetic(60, seed=3).subset(slice(0, 60)), trained.path, tmp_path / "idx")
    assert res.imputed is None
    assert len(res.neighbours)


@pytest.mark.parametrize("form", ["mudata", "obsm", "pair"])
def test_fit_head_and_predict(trained, data, form):
    head = oc.fit_head(_forms(data)[form], trained, labels_key="cell_type", fusion="gated", config=HEAD_CFG)
    assert head.fusion == "gated"
    assert len(head.classes) == 4
    assert "accuracy" in head.metrics  # test-split cells of the model
    new = _forms(data)[form]
    pred = head.predict(new)
    assert len(pred) == data.n_cells
    targets = new if isinstance(new, tuple) else (new,)
    for t in targets:
        assert {"omicsclip_label", "omicsclip_probability", "omicsclip_weight_rna"} <= set(t.obs.columns)
    assert (pred["label"].to_numpy() == data.obs["cell_type"].astype(str).to_numpy()).mean() > 0.5
    rna_only = head.predict(_rna_only(data), key_added=None)
    assert (rna_only["has_prot"] == 0).all()
    assert (rna_only["label"] != "").all()


def test_head_save_load_and_few_labels(tmp_path, trained, data):
    head = oc.fit_head(_forms(data)["obsm"], trained, labels_key="cell_type", labels_per_class=5,
                       fusion="late", config=HEAD_CFG)
    assert head.meta["n_train_cells"] == 20
    path = head.save(tmp_path / "head")
    again = oc.load_head(path, trained)
    pd.testing.assert_frame_equal(again.predict(_forms(data)["obsm"], key_added=None),
                                  head.predict(_forms(data)["obsm"], key_added=None))


def test_evaluate_and_plots(tmp_path, trained):
    from matplotlib.figure import Figure

    res = oc.evaluate(trained, config=TINY)
    assert set(res["methods"]) >= {"omicsclip", "pca"}
    assert res["n_test_cells"] > 0
    assert isinstance(oc.pl.metrics(res), Figure)
    assert isinstance(oc.pl.training_curves(trained), Figure)
    assert isinstance(oc.pl.training_curves({"a": trained, "b": trained}), Figure)
    fewlabel = {"records": [{"labels_per_class": n, "method": m, "accuracy": a, "macro_f1": a - 0.1}
                            for n in (1, 5) for m, a in (("gated", 0.8), ("logreg_rna_pcs", 0.6))]}
    assert isinstance(oc.pl.learning_curves(fewlabel), Figure)
    oc.evaluate(trained, config=TINY, out=tmp_path / "metrics.json")
    assert (tmp_path / "metrics.json").exists()


def test_bad_input_is_one_line(trained):
    from omicsclip.errors import InputError

    with pytest.raises(InputError, match="config"):
        oc.train_model(object(), "x", config=42)
    with pytest.raises(InputError):
        oc.load_model("/nonexistent/model")


PUBLIC = ["train_model", "load_model", "build_index", "load_index", "fit_head", "load_head", "evaluate",
          "OmicsClipModel.embed", "Reference.query", "Reference.save", "Head.predict", "Head.save",
          "pl.training_curves", "pl.imputed_vs_measured", "pl.learning_curves", "pl.metrics"]


@pytest.mark.parametrize("name", PUBLIC)
def test_help_documents_parameters_and_returns(name):
    obj = oc
    for part in name.split("."):
        obj = getattr(obj, part)
    text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
    assert "Parameters" in text
    assert "Returns" in text


def test_top_level_names_do_not_shadow_subpackages():
    """`omicsclip.train` is a subpackage: a top-level function of that name would be replaced on its import."""
    from pathlib import Path

    pkg = Path(oc.__file__).parent
    for name in oc._API:
        assert not (pkg / name).is_dir(), name
        assert not (pkg / f"{name}.py").exists(), name
        assert getattr(oc, name) is getattr(oc.api, name)


def test_head_predict_is_the_predict_command(tmp_path, trained, data):
    """Head.predict and `omicsclip predict` (predict_cells) run one loop (iter_predictions): the same table."""
    from omicsclip.heads.predict import predict_cells
    from omicsclip.io.tsv import read_tsv

    head = oc.fit_head(_forms(data)["obsm"], trained, labels_key="cell_type", fusion="gated", config=HEAD_CFG,
                       out=tmp_path / "head")
    cells = _synthetic(90, seed=5)
    path = tmp_path / "new.h5ad"
    cells.to_anndata().write_h5ad(path)
    predict_cells([path], trained.path, head.path, tmp_path / "pred.tsv", chunk_cells=40)
    cli = read_tsv(tmp_path / "pred.tsv", dtype={"barcode": str, "label": str}).set_index("barcode")
    api = head.predict(cells.to_anndata(), key_added=None, config=[*TINY, "query.chunk_cells=40"])
    assert list(api.index) == list(cli.index)
    assert list(api.columns) == list(cli.columns)
    assert (api["label"].to_numpy() == cli["label"].to_numpy()).all()
    np.testing.assert_allclose(api["probability"].to_numpy(), cli["probability"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(api["weight_rna"].to_numpy(), cli["weight_rna"].to_numpy(), rtol=1e-5)


def test_query_reports_mapping_score_and_never_transfers_ignored_labels(trained, data):
    import anndata as ad

    obsm = _forms(data)["obsm"]
    obsm.obs["cell_type"] = obsm.obs["cell_type"].astype(str).replace({obsm.obs["cell_type"].astype(str).iloc[0]:
                                                                        "unknown"})
    res = oc.build_index(obsm, trained).query(_rna_only(data), k=5)
    score = res.obs["mapping_score"].to_numpy()
    assert ((score > 0) & (score <= 1)).all()
    assert (res.obs["out_of_reference"] == (score <= 0.01)).all()
    assert "unknown" not in set(res.obs["cell_type"])
    kept = oc.build_index(obsm, trained).query(_rna_only(data), k=5, config={"evaluate": {"ignore_labels": []}})
    assert "unknown" in set(kept.obs["cell_type"])
    assert isinstance(res, ad.AnnData)
