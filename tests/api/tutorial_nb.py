"""docs/tutorial.py (jupytext "percent" script) -> docs/tutorial.ipynb with nbformat.

Regenerate after editing the script: ``.venv/bin/python tests/api/tutorial_nb.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCRIPT, NOTEBOOK = DOCS / "tutorial.py", DOCS / "tutorial.ipynb"


def notebook_from_script(text: str):
    import nbformat

    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif kind == "code" and body:  # jupytext's commented magics ("# %matplotlib inline") become magics
            body = "\n".join(ln[2:] if re.match(r"# %[a-z]", ln) else ln for ln in body.splitlines())
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    for i, cell in enumerate(nb.cells):  # stable ids: the committed file does not change on regeneration
        cell["id"] = f"cell-{i:02d}"
    return nb


def render() -> str:
    import nbformat

    return nbformat.writes(notebook_from_script(SCRIPT.read_text())) + "\n"


if __name__ == "__main__":
    NOTEBOOK.write_text(render())
    sys.stdout.write(f"wrote {NOTEBOOK}\n")
