"""The built wheel and the installed package (not the editable checkout).

``test_wheel_contents`` builds the wheel (seconds) and checks it ships every module and every package-data file
the installed package needs: configs and profiles, the Snakemake workflow (Snakefile, rules, conda env, report
captions) and the report templates.

``test_installed_package`` (OMICSCLIP_WHEEL_TEST=1; .ci/run sets it after ``make test``) runs
``tests/e2e/installed.sh``: the wheel installed with its dependencies into a fresh virtual environment outside the
tree, every stage run with the installed CLI from a folder outside the tree, and the packaged Snakemake demo.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = REPO / "tests" / "e2e" / "installed.sh"
# package data: source glob -> folder inside the wheel
DATA = {
    "configs/*.yaml": "omicsclip/configs",
    "configs/profiles/*/config.yaml": "omicsclip/configs/profiles",
    "workflow/Snakefile": "omicsclip/workflow",
    "workflow/rules/*.smk": "omicsclip/workflow/rules",
    "workflow/envs/*": "omicsclip/workflow/envs",
    "workflow/report/*": "omicsclip/workflow/report",
    "pipeline/report/templates/*": "omicsclip/report/templates",
    "pipeline/data/*.tsv": "omicsclip/data",
}
MODULE_ROOTS = {"pipeline": "omicsclip", "cli": "omicsclip/cli", "configs": "omicsclip/configs",
                "workflow": "omicsclip/workflow"}


def source_files() -> list[str]:
    """The tree's files (tracked and untracked-not-ignored), as the wheel build sees a clean clone."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (REPO / f).exists()]


def build_wheel(dest: Path) -> Path:
    """Build the wheel from a copy of the tree's files (no build/ or egg-info of the checkout can leak in)."""
    src = dest / "src"
    for rel in source_files():
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / rel).read_bytes())
        target.chmod((REPO / rel).stat().st_mode)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(dest / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (wheel,) = (dest / "dist").glob("omicsclip-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return zipfile.ZipFile(build_wheel(tmp_path_factory.mktemp("wheel")))


def test_wheel_contents(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    files = source_files()
    expected = set()
    for pattern, inside in DATA.items():
        matches = sorted(REPO.glob(pattern))
        assert matches, f"nothing matches {pattern} in the tree"
        base = pattern.split("*")[0].rstrip("/") if "*" in pattern else str(Path(pattern).parent)
        expected |= {f"{inside}/{p.relative_to(REPO / base).as_posix()}" for p in matches if p.is_file()}
    for f in files:
        root, _, rest = f.partition("/")
        if root in MODULE_ROOTS and f.endswith(".py"):
            expected.add(f"{MODULE_ROOTS[root]}/{rest}")
    missing = sorted(expected - names)
    assert not missing, f"missing from the wheel: {missing}"
    for must in ("omicsclip/configs/default.yaml", "omicsclip/configs/schema.yaml", "omicsclip/configs/demo.yaml",
                 "omicsclip/configs/profiles/local/config.yaml", "omicsclip/configs/profiles/slurm/config.yaml",
                 "omicsclip/workflow/Snakefile", "omicsclip/workflow/rules/common.smk",
                 "omicsclip/workflow/envs/omicsclip.yaml", "omicsclip/workflow/envs/omicsclip.post-deploy.sh",
                 "omicsclip/workflow/install.py", "omicsclip/cli/main.py", "omicsclip/data/protein_aliases.tsv"):
        assert must in names, must
    assert any(n.startswith("omicsclip/report/templates/") for n in names), "no report templates in the wheel"
    stray = sorted(n for n in names if not n.startswith(("omicsclip/", "omicsclip-")))
    assert not stray, f"files outside the package: {stray}"  # no tests/, bench/, data/ at the top level


def test_wheel_metadata(wheel: zipfile.ZipFile) -> None:
    (dist_info,) = {n.split("/")[0] for n in wheel.namelist() if ".dist-info/" in n}
    entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert re.search(r"^\[console_scripts\]\s*\nomicsclip = omicsclip\.cli\.main:main$", entry_points, re.M)
    meta = wheel.read(f"{dist_info}/METADATA").decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert [r for r in requires if "extra ==" not in r] == [d.replace(" ", "") for d in project["dependencies"]]


@pytest.mark.skipif(os.environ.get("OMICSCLIP_WHEEL_TEST") != "1",
                    reason="set OMICSCLIP_WHEEL_TEST=1 (installs the wheel into a new venv; minutes)")
@pytest.mark.timeout(2400)
def test_installed_package(tmp_path: Path) -> None:
    work = tmp_path / "installed"
    assert not work.resolve().is_relative_to(REPO)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(["bash", str(SCRIPT), str(work)], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=2400)
    print(res.stdout[-6000:])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "all installed-package checks passed" in res.stdout
    timings = dict(re.findall(r"TIMING (\w+) (\d+) s", res.stdout))
    assert set(timings) == {"wheel_build", "venv_install", "installed_pipeline", "demo"}, res.stdout
