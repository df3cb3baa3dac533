"""The package's layering and layout, read from the source with ``ast`` (nothing is imported).

Imports only go down: base (errors, config, conventions, configs, progress) -> io -> model -> train ->
index | heads -> evaluation -> report -> api -> cli. ``index`` and ``heads`` do not import each other. The workflow package sits
outside the library and may import anything; of the library only the CLI imports it. The library never imports
typer or Snakemake; the encoders and the loss import nothing but torch, numpy and the standard library.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import REPO

# source folder -> import package (pyproject's [tool.setuptools.package-dir])
ROOTS = {"pipeline": "omicsclip", "cli": "omicsclip.cli", "workflow": "omicsclip.workflow",
         "configs": "omicsclip.configs"}
RANK = {"errors": 0, "config": 0, "conventions": 0, "configs": 0, "progress": 0, "io": 1, "model": 2, "train": 3,
        "index": 4, "heads": 4, "evaluation": 5, "report": 6, "api": 7, "cli": 8, "workflow": 9}
BASE = 0
NOT_LIBRARY = {"cli", "workflow"}
MAX_LINES = 500
TORCH_ONLY = {"omicsclip.model.encoders", "omicsclip.model.loss", "omicsclip.model.batchops",
              "omicsclip.model.randbits"}


@dataclass(frozen=True)
class Module:
    name: str  # omicsclip.x.y
    path: Path
    is_package: bool
    tree: ast.Module

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]

    def rel(self) -> str:
        return str(self.path.relative_to(REPO))


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(REPO)
    parts = [ROOTS[rel.parts[0]], *rel.parts[1:-1]]
    is_package = rel.name == "__init__.py"
    if not is_package:
        parts.append(rel.stem)
    return ".".join(parts), is_package


def _modules() -> list[Module]:
    out = []
    for folder in ROOTS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            name, is_package = _module_name(path)
            out.append(Module(name, path, is_package, ast.parse(path.read_text(), str(path))))
    return out


MODULES = _modules()


def test_module_names() -> None:
    names = {m.name for m in MODULES}
    assert {"omicsclip", "omicsclip.config", "omicsclip.io", "omicsclip.cli.main", "omicsclip.workflow",
            "omicsclip.workflow.install"} <= names
    assert _module_name(REPO / "pipeline" / "model" / "loss.py") == ("omicsclip.model.loss", False)
    assert _module_name(REPO / "cli" / "main.py") == ("omicsclip.cli.main", False)


def imports(module: Module) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``module``, also inside functions (lazy imports)."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from omicsclip.x import y` may import the submodule omicsclip.x.y
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                      if f"{target}.{alias.name}" in MODULE_NAMES]
    return found


MODULE_NAMES = {m.name for m in MODULES}


def layer(name: str) -> str:
    """The layer of an ``omicsclip`` module: its first sub-name (``omicsclip`` itself is base)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "errors"


def test_every_module_has_a_layer() -> None:
    unranked = sorted({m.rel() for m in MODULES if layer(m.name) not in RANK})
    assert not unranked, f"modules outside the layer order (add them to RANK and DESIGN.md): {unranked}"


def _layering_violations() -> list[str]:
    bad = []
    for m in MODULES:
        src = layer(m.name)
        if src == "workflow" or src not in RANK:
            continue  # the workflow may import anything
        for line, target in imports(m):
            if not (target == "omicsclip" or target.startswith("omicsclip.")):
                continue
            dst = layer(target)
            if dst not in RANK or dst == src:
                continue
            if m.name == "omicsclip" and dst == "api":
                continue  # the package root re-exports the notebook API (lazily, on first attribute access)
            if dst == "workflow":
                if src != "cli":
                    bad.append(f"{m.rel()}:{line}: {m.name} imports {target} (only the CLI may import the workflow)")
                continue
            r_src, r_dst = RANK[src], RANK[dst]
            if r_dst < r_src or (r_dst == r_src == BASE):
                continue
            why = "index and heads are independent" if r_dst == r_src else "imports go down only"
            bad.append(f"{m.rel()}:{line}: {m.name} ({src}, rank {r_src}) imports {target} ({dst}, rank {r_dst}): {why}")
    return bad


def test_imports_only_go_down_the_layers() -> None:
    bad = _layering_violations()
    assert not bad, "\n".join(bad)


def test_the_layer_check_sees_violations() -> None:
    """The checker itself: a relative upward import and a heads <-> index import are caught."""
    fake = [Module("omicsclip.io.fake", REPO / "pipeline" / "io" / "fake.py", False,
                   ast.parse("from ..model import encoders\n")),
            Module("omicsclip.heads.fake", REPO / "pipeline" / "heads" / "fake.py", False,
                   ast.parse("def f():\n    from omicsclip.index.query import x\n")),
            Module("omicsclip.report.fake", REPO / "pipeline" / "report" / "fake.py", False,
                   ast.parse("from omicsclip import workflow\n"))]
    MODULES.extend(fake)
    try:
        bad = _layering_violations()
    finally:
        del MODULES[-len(fake):]
    assert any("omicsclip.io.fake (io, rank 1) imports omicsclip.model" in b for b in bad), bad
    assert any("omicsclip.heads.fake" in b and "index and heads are independent" in b for b in bad), bad
    assert any("omicsclip.report.fake" in b and "only the CLI may import the workflow" in b for b in bad), bad


def test_library_never_imports_typer_or_snakemake() -> None:
    bad = [f"{m.rel()}:{line}: {target}" for m in MODULES if layer(m.name) not in NOT_LIBRARY
           for line, target in imports(m) if target.split(".")[0] in {"typer", "snakemake", "click"}]
    assert not bad, bad


def test_encoders_and_loss_need_only_torch() -> None:
    allowed = {"torch", "numpy", "__future__"} | set(sys.stdlib_module_names)
    found = [m for m in MODULES if m.name in TORCH_ONLY]
    assert len(found) == len(TORCH_ONLY)
    # each other, too: bench/gpu_train.py loads them as a bare package, without omicsclip's other modules
    bad = [f"{m.rel()}:{line}: {target}" for m in found for line, target in imports(m)
           if target.split(".")[0] not in allowed and target not in TORCH_ONLY]
    assert not bad, bad


def test_no_module_shadows_the_standard_library() -> None:
    """A module named like a stdlib one (select.py, inspect.py) breaks `import select` for scripts run from its
    folder. Subpackages (omicsclip.io) are only ever imported by their absolute name, so they may."""
    bad = [m.rel() for m in MODULES if not m.is_package and m.name.rpartition(".")[2] in sys.stdlib_module_names]
    assert not bad, bad


def test_no_module_is_too_long() -> None:
    long = {m.rel(): n for m in MODULES if (n := len(m.path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


def test_every_package_defines_all() -> None:
    missing = [m.rel() for m in MODULES if m.is_package and not any(
        isinstance(node, ast.Assign | ast.AnnAssign) and any(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
        for node in m.tree.body)]
    assert not missing, f"package __init__ without __all__: {missing}"


def test_console_script_entry_point() -> None:
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "omicsclip"]
    assert ep.value == "omicsclip.cli.main:main"
    assert ep.dist is not None
    assert ep.dist.name == "omicsclip"
    from omicsclip.cli.main import main

    assert ep.load() is main


@pytest.mark.parametrize("folder", sorted(ROOTS))
def test_package_dirs_match_pyproject(folder: str) -> None:
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {"omicsclip": "pipeline", **setuptools["package-dir"]}
    assert dirs[ROOTS[folder]] == folder
    packages = {m.name for m in MODULES if m.is_package}
    assert packages == set(setuptools["packages"])
