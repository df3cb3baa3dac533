"""bench/gpu_train.py (the GPU throughput benchmark) runs its full step on the CPU at tiny sizes: the device
data pipeline, the default projection input and the dense-gene input, chunked InfoNCE."""

from __future__ import annotations

import json

import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def gpu_train():
    return load_bench("gpu_train")


@pytest.mark.parametrize(("extra", "n_pcs", "genes_in"), [([], 30, 200), (["--n-pcs", "0", "--feature-dropout", "0.1"], 0, 0)])
def test_gpu_bench_small_runs_on_cpu(gpu_train, tmp_path, extra, n_pcs, genes_in):
    out = tmp_path / "g.json"
    report = gpu_train.main(["--small", "--steps", "1", "--device", "cpu", "--out", str(out), *extra])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["rna_input"]["n_pcs"] == n_pcs
    assert report["rna_input"]["protein_genes"] == genes_in
    assert [r["batch"] for r in report["results"]] == [256, 1024]
    assert report["results"][1]["logit_chunk"] == 512  # the larger batch takes the chunked-logits path
    for r in report["results"]:
        assert r["cells_per_s"] > 0
        assert r["pipeline_cells_per_s"] > 0
        assert r["model_cells_per_s"] > 0


def test_input_axes_are_pcs_then_gene_indicators(gpu_train):
    import torch

    axes = gpu_train.input_axes(50, 5, 7, torch.device("cpu"))
    assert axes.shape == (12, 50)
    torch.testing.assert_close(axes[:5] @ axes[:5].T, torch.eye(5), atol=1e-5, rtol=0)
    ind = axes[5:]
    assert torch.all(ind.sum(1) == 1)
    assert torch.all(ind.sum(0) <= 1)
    assert gpu_train.input_axes(50, 0, 7, torch.device("cpu")) is None


def test_protein_gene_cap_is_the_preprocessing_one(gpu_train):
    from types import SimpleNamespace

    from omicsclip.model.geneselect import MAX_PROTEIN_GENES

    args = SimpleNamespace(n_pcs=30, protein_genes=10)
    assert gpu_train.n_protein_genes(args, 2000, 200) == MAX_PROTEIN_GENES  # 200 proteins x 10, capped
    assert gpu_train.n_protein_genes(args, 2000, 8) == 80
    assert gpu_train.n_protein_genes(SimpleNamespace(n_pcs=0, protein_genes=10), 2000, 8) == 0


def test_gpu_bench_imports_with_torch_alone(tmp_path):
    """On the GPU machine only torch is installed: the script loads the model modules as a bare package from the
    checkout. Simulated with a path that holds every installed package except omicsclip (``python -S``: no
    site-packages, no .pth files, so no editable install)."""
    import site
    import subprocess
    import sys
    from pathlib import Path

    import torch

    site_dir = Path(torch.__file__).resolve().parents[1]
    assert site_dir in {Path(p).resolve() for p in site.getsitepackages()}
    links = tmp_path / "site"
    links.mkdir()
    for entry in site_dir.iterdir():
        if "omicsclip" not in entry.name.lower() and not entry.name.endswith(".pth"):
            (links / entry.name).symlink_to(entry)
    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_train.py"
    code = (f"import sys, runpy; sys.path.insert(0, {str(links)!r}); "
            "import importlib.util; assert importlib.util.find_spec('omicsclip') is None; "
            f"g = runpy.run_path({str(script)!r}, run_name='gpu_bench'); "
            "import omicsclip.model.batchops as b; print(g['ClipLoss'].__module__, b.__file__)")
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["omicsclip.model.loss", str(script.parents[1] / "pipeline" / "model" / "batchops.py")]
