"""The report, select and their CLI commands on small fake stage outputs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from omicsclip.cli.main import app
from omicsclip.errors import InputError
from omicsclip.evaluation.selection import read_train_log, select_best, validation_metrics, write_selection
from omicsclip.report import ReportInputs, fewlabel_curves, render_report, write_report

TYPES = ["B", "CD4 T", "CD8 T", "NK", "Mono"]
PROTEINS = [f"CD{i}" for i in range(1, 9)]


def _omicsclip() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


def _write_run(root: Path, temp: float, val_recall: float, *, epochs: int = 6) -> Path:
    run = root / f"t{temp:g}"
    (run / "model").mkdir(parents=True)
    with open(run / "model" / "train_log.jsonl", "w") as fh:
        for e in range(1, epochs + 1):
            fh.write(json.dumps({"epoch": e, "step": 10 * e, "train_loss": 4.0 / e, "temperature": temp,
                                 "val_recall_at_10": val_recall * e / epochs, "val_foscttm": 0.3 / e,
                                 "lr": 1e-3, "seconds": 0.1}) + "\n\n")
    (run / "model" / "model.json").write_text(json.dumps({"data_fingerprint": "d" * 16,
                                                          "model_fingerprint": f"m{temp}"}))
    (run / "model" / "model.safetensors").write_bytes(b"weights")
    (run / "model" / "checkpoints").mkdir()
    (run / "model" / "checkpoints" / "step_10.pt").write_bytes(b"ckpt")
    methods = {m: {"foscttm": f, "recall_at_1": r / 3, "recall_at_10": r, "recall_at_50": min(1.0, 2 * r),
                   "match_score": r / 5, "celltype_match": 0.9 * r + 0.1, "fewlabel_accuracy": 0.8,
                   "protein_pearson": 0.6 if m in ("omicsclip", "ridge") else None,
                   "protein_rmse": 0.7 if m in ("omicsclip", "ridge") else None}
               for m, f, r in (("omicsclip", 0.05, val_recall), ("cca", 0.1, 0.3), ("ridge", 0.12, 0.25))}
    methods["pca"] = {k: None for k in methods["cca"]} | {"fewlabel_accuracy": 0.7}
    metrics = {"methods": methods, "n_test_cells": 120, "seed": 0,
               "validation": {"n_val_cells": 60, "foscttm": 0.3 - val_recall / 10, "recall_at_1": val_recall / 3,
                              "recall_at_10": val_recall, "celltype_match": None},
               "protein_pearson_per_protein": {"omicsclip": {p: 0.5 for p in PROTEINS},
                                               "ridge": {p: 0.4 for p in PROTEINS}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def fake_outputs(tmp_path: Path) -> dict:
    """Stage outputs of a 2-temperature sweep on 200 fake cells."""
    import anndata as ad

    rng = np.random.default_rng(0)
    runs = [_write_run(tmp_path, 0.05, 0.55), _write_run(tmp_path, 0.1, 0.62)]
    n = 200
    y = rng.choice(TYPES, size=n)
    centres = {t: rng.normal(size=16) for t in TYPES}
    base = np.stack([centres[t] for t in y]) + 0.3 * rng.normal(size=(n, 16))
    rna, prot = base + 0.1 * rng.normal(size=base.shape), base + 0.1 * rng.normal(size=base.shape)
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    obs = pd.DataFrame({"cell_type": pd.Categorical(y), "split": rng.choice(["train", "val", "test"], size=n)},
                       index=[f"cell{i}" for i in range(n)])
    emb = ad.AnnData(np.zeros((n, 0), np.float32), obs=obs)
    emb.obsm["X_omicsclip_rna"], emb.obsm["X_omicsclip_prot"] = norm(rna), norm(prot)
    emb.obsm["X_omicsclip_joint"] = norm(norm(rna) + norm(prot))
    emb.write_zarr(tmp_path / "embeddings.zarr")
    query = tmp_path / "query"
    query.mkdir()
    measured = rng.normal(size=(60, len(PROTEINS)))
    imp = ad.AnnData((measured + 0.5 * rng.normal(size=measured.shape)).astype(np.float32),
                     obs=pd.DataFrame(index=[f"cell{i}" for i in range(60)]),
                     var=pd.DataFrame(index=PROTEINS))
    imp.layers["measured"] = measured.astype(np.float32)
    imp.write_h5ad(query / "imputed_protein.h5ad")
    (query / "summary.json").write_text(json.dumps({"n_query_cells": 60, "k": 10}))
    fewlabel = {"records": [{"method": m, "labels_per_class": k, "draw": d, "accuracy": acc + 0.01 * d,
                             "macro_f1": acc - 0.05}
                            for m, base_acc in (("omicsclip", 0.6), ("pca", 0.4))
                            for k in (1, 5, 10) for d in range(3)
                            for acc in [base_acc + 0.03 * k ** 0.5]]}
    (tmp_path / "fewlabel.json").write_text(json.dumps(fewlabel))
    inspect = {"path": "store.zarr", "n_cells": n, "n_genes": 500, "n_proteins": len(PROTEINS), "nnz_rna": 9000,
               "nnz_prot": 1500, "sparsity_rna": 0.91, "sparsity_prot": 0.06, "proteins": PROTEINS,
               "genes_head": ["G1"], "obs": {"cell_type": {t: int((y == t).sum()) for t in TYPES},
                                             "total_counts_rna": {"min": 100.0, "median": 900.0, "max": 5000.0}},
               "qc": {"n_cells_in": n, "n_cells_dropped": 0},
               "provenance": {"inputs": {"rna": {"path": "cells.h5ad", "sha256": "ab" * 32, "bytes": 1234}},
                              "tool_version": "0.1.0"}}
    (tmp_path / "inspect.json").write_text(json.dumps(inspect))
    return {"root": tmp_path, "runs": runs, "emb": tmp_path / "embeddings.zarr", "query": query,
            "fewlabel": tmp_path / "fewlabel.json", "inspect": tmp_path / "inspect.json"}


def test_select_uses_validation_not_test(tmp_path: Path) -> None:
    a = _write_run(tmp_path, 0.05, 0.7)
    b = _write_run(tmp_path, 0.1, 0.5)
    # make the test metrics of b look better: selection must ignore them
    m = json.loads((b / "metrics.json").read_text())
    m["methods"]["omicsclip"]["recall_at_10"] = 0.99
    (b / "metrics.json").write_text(json.dumps(m))
    sel = select_best([a / "metrics.json", b / "metrics.json"])
    assert sel["selected"] == "0.05"
    assert sel["temperature"] == 0.05
    assert sel["source"] == "validation"
    assert [r["rank"] for r in sel["runs"]] == [1, 2]
    assert "n_val_cells" in validation_metrics(a / "metrics.json")  # counts are kept but never ranked on
    assert select_best([a / "metrics.json", b / "metrics.json"], metric="foscttm")["selected"] == "0.05"

    write_selection(sel, tmp_path / "sel.json", copy_model_to=tmp_path / "best_model")
    assert json.loads((tmp_path / "sel.json").read_text())["selected"] == "0.05"
    assert (tmp_path / "best_model" / "model.safetensors").exists()
    assert not (tmp_path / "best_model" / "checkpoints").exists()
    with pytest.raises(InputError, match="already exists"):
        write_selection(sel, tmp_path / "sel.json")


def test_select_rejects_missing_validation(tmp_path: Path) -> None:
    run = _write_run(tmp_path, 0.1, 0.5)
    (run / "metrics.json").write_text(json.dumps({"methods": {}}))
    with pytest.raises(InputError, match="no 'validation' metrics"):
        select_best([run / "metrics.json"])
    with pytest.raises(InputError, match="choose one of"):
        select_best([run / "metrics.json"], metric="accuracy")


def test_fewlabel_curves_aggregates_draws() -> None:
    data = {"records": [{"method": "omicsclip", "labels_per_class": 5, "accuracy": a} for a in (0.5, 0.7)]}
    curves = fewlabel_curves(data)
    ((n, mean, sd),) = curves["accuracy"]["omicsclip"]
    assert n == 5
    assert mean == pytest.approx(0.6)
    assert sd == pytest.approx(np.std([0.5, 0.7], ddof=1))
    nested = fewlabel_curves({"omicsclip": {"1": {"accuracy": {"mean": 0.4, "std": 0.1}}}})
    assert nested["accuracy"]["omicsclip"] == [(1.0, 0.4, 0.1)]
    with pytest.raises(InputError):
        fewlabel_curves({"nothing": 1})


def test_read_train_log_names_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "train_log.jsonl"
    p.write_text('{"epoch": 1}\n\nnot json\n')
    with pytest.raises(InputError, match="line 3"):
        read_train_log(p)
    p.write_text('{"epoch": 1}\n[1, 2]\n')
    with pytest.raises(InputError, match="line 2 is not a JSON object"):
        read_train_log(p)


def test_metrics_without_numbers_is_a_note_not_a_traceback() -> None:
    from omicsclip.evaluation.selection import RunData
    from omicsclip.report.render import Figures, _guard, _section_metrics

    run = RunData(label="0.1", temperature=0.1, log=[], metrics={"methods": {"omicsclip": {}}}, model_meta={})
    section = _guard("Metrics", _section_metrics, run, Figures(None))
    assert "no numeric metrics" in section["note"]


@pytest.mark.slow
def test_report_is_self_contained(fake_outputs: dict) -> None:
    f = fake_outputs
    sel = select_best([r / "metrics.json" for r in f["runs"]])
    write_selection(sel, f["root"] / "selection.json")
    inputs = ReportInputs(dataset="fake", runs=f["runs"], inspect=f["inspect"], selection=f["root"] / "selection.json",
                          embeddings=f["emb"], query=f["query"], fewlabel=f["fewlabel"],
                          config={"train": {"epochs": 6}}, label_key="cell_type")
    out = write_report(inputs, f["root"] / "report.html", figures_dir=f["root"] / "figures", max_umap_cells=150)
    text = out.read_text()
    # self-contained: no external resources of any kind
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)
    assert "<script" not in text
    assert "@import" not in text
    assert "url(" not in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    expected = {"cell_types", "training_curves", "temperature_sweep", "retrieval_vs_baselines", "umap",
                "imputation", "fewlabel"}
    assert len(images) == len(expected)
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert {p.stem for p in (f["root"] / "figures").iterdir()} == expected
    for heading in ("Dataset and QC", "Temperature sweep", "Retrieval and imputation vs baselines",
                    "Embeddings (UMAP)", "Imputed vs measured protein", "Few-label", "Run provenance"):
        assert heading in text
    assert 'class="note"' not in text  # every section rendered
    assert "selected temperature <b>0.1</b>" in text  # 0.62 > 0.55 on validation
    assert "sha256" in text
    assert "ab" * 32 in text
    assert "epochs: 6" in text


@pytest.mark.slow
def test_report_degrades_to_notes(fake_outputs: dict) -> None:
    f = fake_outputs
    (f["query"] / "imputed_protein.h5ad").unlink()
    html = render_report(ReportInputs(dataset="fake", runs=f["runs"][:1], query=f["query"]))
    assert "imputed_protein.h5ad: not found" in html
    assert "No few-label results" in html
    assert "No embeddings were given" in html
    assert html.count("data:image/png;base64,") == 2  # training curves + metrics bars
    with pytest.raises(InputError, match="at least one run"):
        render_report(ReportInputs(dataset="fake", runs=[]))


def test_select_and_report_cli(fake_outputs: dict) -> None:
    f = fake_outputs
    runner = CliRunner()
    res = runner.invoke(app, ["select", *[str(r / "metrics.json") for r in f["runs"]],
                              "--out", str(f["root"] / "sel.json"), "--copy-model-to", str(f["root"] / "best")])
    assert res.exit_code == 0, res.output
    assert "selected 0.1" in res.output
    assert (f["root"] / "best" / "model.json").exists()
    res = runner.invoke(app, ["select", str(f["runs"][0] / "metrics.json"), "--metric", "nope",
                              "--out", str(f["root"] / "x.json")])
    assert res.exit_code == 2
    assert "choose one of" in res.output
    # the installed entry point: report with only the runs (no UMAP -> fast)
    out = f["root"] / "r.html"
    proc = subprocess.run([_omicsclip(), "report", "--dataset", "fake", "--run", str(f["runs"][0]),
                           "--run", str(f["runs"][1]), "--selection", str(f["root"] / "sel.json"),
                           "--out", str(out), "--set", "train.epochs=6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Temperature sweep" in out.read_text()
    proc = subprocess.run([_omicsclip(), "report", "--run", str(f["runs"][0]), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr


@pytest.mark.slow
def test_umap_separates_clusters_in_two_dimensions() -> None:
    """UMAP of three blobs: finite 2-D coordinates, clusters separated, each cluster a 2-D cloud."""
    from sklearn.metrics import silhouette_score

    from omicsclip.report.projection import umap_coords

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    y = np.repeat(np.arange(3), 100)
    xy = umap_coords(centres[y] + rng.normal(size=(300, 16)), seed=0)
    assert xy.shape == (300, 2)
    assert np.isfinite(xy).all()
    assert silhouette_score(xy, y) > 0.5
    for k in range(3):
        s = np.linalg.svd(xy[y == k] - xy[y == k].mean(0), compute_uv=False)
        assert s[1] / s[0] > 0.25


@pytest.mark.parametrize(("field", "value", "key"), [
    ("n_cells", "many", "n_cells"), ("proteins", "CD3", "proteins"), ("obs", {"cell_type": [1, 2]}, "obs.cell_type"),
    ("obs", {"cell_type": {"T": "ten"}}, "obs.cell_type"), ("qc", [1], "qc"), ("n_genes", 500.0, "n_genes"),
    ("obs", {"batch": {"n_levels": "many"}}, "obs.batch.n_levels"), ("provenance", [1], "provenance"),
    ("provenance", {"inputs": {"rna": "cells.h5ad"}}, "provenance.inputs")])
def test_report_refuses_inspect_json_of_the_wrong_shape(fake_outputs: dict, field, value, key) -> None:
    f = fake_outputs
    info = json.loads(f["inspect"].read_text())
    info[field] = value
    f["inspect"].write_text(json.dumps(info))
    with pytest.raises(InputError, match=f"'{key}' must be"):
        render_report(ReportInputs(dataset="fake", runs=f["runs"][:1], inspect=f["inspect"]))


def test_untrusted_names_are_escaped(fake_outputs: dict) -> None:
    """Dataset names, labels and table cells may hold '<': the page shows them, it does not parse them."""
    f = fake_outputs
    info = json.loads(f["inspect"].read_text())
    info["obs"]["cell_type"] = {"<script>x</script>": 3, "B": 4}
    f["inspect"].write_text(json.dumps(info))
    (f["query"] / "summary.json").write_text(json.dumps({"<b>key</b>": "a<b"}))
    html = render_report(ReportInputs(dataset="d<i>s</i>", runs=f["runs"][:1], inspect=f["inspect"],
                                      query=f["query"], label_key="cell_type"))
    assert "<script" not in html
    assert "<i>" not in html
    assert "<b>key</b>" not in html
    assert "d&lt;i&gt;s&lt;/i&gt;" in html
    assert "&lt;script&gt;x&lt;/script&gt; (3)" in html
    assert "a&lt;b" in html


def test_training_curves_show_each_datasets_validation_of_a_pooled_run():
    from omicsclip.report.plots import training_curves

    def log(groups):
        return [{"epoch": e, "train_loss": 5.0 - e, "val_recall_at_10": 0.1 * e, "val_foscttm": 0.2 / e,
                 **({"val_foscttm_by_group": {"a": 0.1 / e, "b": 0.3 / e}} if groups else {})} for e in (1, 2, 3)]

    fig = training_curves({"0.05": log(True), "0.1": log(True)}, selected="0.1")
    fos = fig.axes[2]
    per = {ln.get_label(): list(ln.get_ydata()) for ln in fos.get_lines() if ln.get_label().startswith("dataset ")}
    assert per == {"dataset a": pytest.approx([0.1, 0.05, 0.1 / 3]), "dataset b": pytest.approx([0.3, 0.15, 0.1])}
    assert fos.get_legend() is not None
    # a single-dataset run: no extra lines, no legend in that panel
    plain = training_curves({"0.05": log(False)}, selected="0.05").axes[2]
    assert [ln.get_label() for ln in plain.get_lines()] == ["T=0.05 (selected)"]
    assert plain.get_legend() is None
