"""The whole workflow end to end on a tiny synthetic dataset (2 temperatures), then what reruns after changes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import job_counts, smk, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

TINY = {
    "results_dir": "results",
    "datasets": {"tiny": {"synthetic": {"cells": 600, "genes": 200, "proteins": 10, "types": 4, "seed": 1},
                          "label_key": "cell_type"}},
    "preprocess": {"n_hvg": 150},
    "model": {"rna_hidden": [64], "prot_hidden": [32], "embed_dim": 16},
    "train": {"epochs": 3, "batch_size": 128, "warmup_steps": 5, "temperatures": [0.1, 0.2], "patience": 3,
              "device": "cpu"},
    "evaluate": {"labels_per_class": [1, 5], "n_draws": 2, "n_pcs": 10},
    "finetune": {"epochs": 20},
}
DOWNSTREAM = {"select", "embed", "index", "query", "finetune", "fewlabel", "report"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("tiny_workflow")
    cfg = write_config(work / "tiny.yaml", TINY)
    res = smk(["--cores", "2", "--configfile", str(cfg)], work, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"work": work, "cfg": cfg, "ds": work / "results" / "tiny", "stdout": res.stdout + res.stderr}


def test_every_output_is_there(tiny_run: dict) -> None:
    ds = tiny_run["ds"]
    expected = ["synthetic.h5ad", "store.zarr", "inspect.json", "best/selection.json", "best/model/model.json",
                "best/embeddings.zarr", "best/index/meta.json", "best/query/summary.json",
                "best/query/imputed_protein.h5ad", "best/head/head.json", "best/fewlabel.json", "report.html"]
    for t in ("0.1", "0.2"):
        expected += [f"t{t}/model/model.safetensors", f"t{t}/model/train_log.jsonl", f"t{t}/metrics.json"]
    missing = [p for p in expected if not (ds / p).exists()]
    assert not missing, missing
    rules = ["synth", "ingest", "inspect", "train_t0.1", "train_t0.2", "evaluate_t0.1", "select", "embed", "index",
             "query", "finetune", "fewlabel", "report"]
    for rule in rules:
        assert (ds / "logs" / f"{rule}.log").exists(), rule
        assert (ds / "benchmarks" / f"{rule}.tsv").read_text().startswith("s\t"), rule
    assert not list(ds.rglob(".*.tmp-*")), "temporary outputs left behind"
    assert {p.name for p in (ds / "figures").iterdir()} >= {"training_curves.png", "umap.png", "imputation.png"}


def test_selection_is_on_validation(tiny_run: dict) -> None:
    ds = tiny_run["ds"]
    sel = json.loads((ds / "best" / "selection.json").read_text())
    val = {t: json.loads((ds / f"t{t}" / "metrics.json").read_text())["validation"]["recall_at_10"]
           for t in ("0.1", "0.2")}
    assert sel["source"] == "validation"
    assert sel["selected"] in val
    assert val[sel["selected"]] == max(val.values())
    best = json.loads((ds / "best" / "model" / "model.json").read_text())
    chosen = json.loads((ds / f"t{sel['selected']}" / "model" / "model.json").read_text())
    assert best == chosen
    assert not (ds / "best" / "model" / "checkpoints").exists()


def test_report_is_complete_and_self_contained(tiny_run: dict) -> None:
    text = (tiny_run["ds"] / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)
    assert "<script" not in text
    notes = re.findall(r'<p class="note">(.*?)</p>', text)
    assert not notes, notes  # every section rendered from real stage outputs
    assert text.count("data:image/png;base64,") >= 7
    for heading in ("Temperature sweep", "Embeddings (UMAP)", "Imputed vs measured protein", "Few-label"):
        assert heading in text


def test_second_run_does_nothing(tiny_run: dict) -> None:
    res = smk(["-n", "--configfile", str(tiny_run["cfg"])], tiny_run["work"])
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr


def _changed(tiny_run: dict, name: str, **sections: dict) -> dict[str, int]:
    cfg = yaml.safe_load(tiny_run["cfg"].read_text())
    for section, values in sections.items():
        cfg[section].update(values) if section in cfg else cfg.update({section: values})
    res = smk(["-n", "--configfile", str(write_config(tiny_run["work"] / name, cfg))], tiny_run["work"])
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    counts.pop("all", None)
    counts.pop("default", None)  # the top-level Snakefile's default target
    return counts


def test_changing_a_setting_reruns_only_what_depends_on_it(tiny_run: dict) -> None:
    assert _changed(tiny_run, "nprobe.yaml", index={"nprobe": 7}) == {"index": 1, "query": 1, "report": 1}
    assert _changed(tiny_run, "k.yaml", query={"impute_k": 5}) == {
        "evaluate": 2, "query": 1, **{r: 1 for r in DOWNSTREAM - {"query"}}}
    # evaluate imputes like query, so the imputation temperature reruns it too
    assert _changed(tiny_run, "qt.yaml", query={"temperature": 0.1}) == {
        "evaluate": 2, "query": 1, **{r: 1 for r in DOWNSTREAM - {"query"}}}
    epochs = _changed(tiny_run, "epochs.yaml", train={"epochs": 4})
    assert epochs == {"train": 2, "evaluate": 2, **{r: 1 for r in DOWNSTREAM}}
    more = _changed(tiny_run, "temps.yaml", train={"temperatures": [0.1, 0.2, 0.4]})
    assert more == {"train": 1, "evaluate": 1, **{r: 1 for r in DOWNSTREAM}}
    assert _changed(tiny_run, "ft.yaml", finetune={"epochs": 21}) == {"finetune": 1, "fewlabel": 1, "report": 1}


def test_demo_command_dry_run(tmp_path: Path) -> None:
    exe = shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")
    proc = subprocess.run([exe, "demo", "--out", str(tmp_path / "d"), "--dry-run", "--set", "train.epochs=2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert job_counts(proc.stdout + proc.stderr)["train"] == 3
    assert yaml.safe_load((tmp_path / "d" / "demo_overrides.yaml").read_text()) == {"train": {"epochs": 2}}
    assert not (tmp_path / "d" / "results").exists()  # a dry run writes nothing


def test_figures_are_registered_for_snakemake_report(tiny_run: dict) -> None:
    import zipfile

    out = tiny_run["work"] / "smk_report.zip"
    res = smk(["--configfile", str(tiny_run["cfg"]), "--report", str(out)], tiny_run["work"])
    assert res.returncode == 0, res.stderr
    names = {Path(n).name for n in zipfile.ZipFile(out).namelist()}
    assert {"umap.png", "training_curves.png", "imputation.png", "fewlabel.png"} <= names
