"""docs/tutorial.ipynb: generated from docs/tutorial.py, and runs top to bottom on small synthetic data."""

from __future__ import annotations

import json
import os
import sys

import pytest
from tutorial_nb import NOTEBOOK, render


def test_notebook_is_generated_from_the_script():
    assert NOTEBOOK.read_text() == render(), "regenerate: .venv/bin/python tests/api/tutorial_nb.py"


@pytest.mark.slow
def test_tutorial_runs(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    monkeypatch.setenv("OMICSCLIP_TUTORIAL_SMALL", "1")
    monkeypatch.setenv("OMICSCLIP_TUTORIAL_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("OMICSCLIP_TUTORIAL_DATA", str(tmp_path / "absent.h5"))
    monkeypatch.setenv("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
    # the kernel is this interpreter (this venv's omicsclip), whatever kernels the user has installed:
    # JUPYTER_PATH comes first in Jupyter's search path
    spec = tmp_path / "jupyter" / "kernels" / "omicsclip-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "omicsclip test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.reads(NOTEBOOK.read_text(), as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="omicsclip-test",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # training curves, UMAP, imputed vs measured, metrics
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "label transfer from RNA alone" in text
    assert "skipping the public-data section" in text
