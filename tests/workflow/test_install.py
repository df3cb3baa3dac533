"""The --sdm conda environment: its pip list is pyproject's dependencies, and its post-deploy script installs the
omicsclip that runs the workflow (omicsclip.workflow.install), with nothing for the user to set."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from omicsclip.workflow import install
from omicsclip.workflow.install import pip_args, pip_args_from_direct_url, pip_spec

ENVS = REPO / "workflow" / "envs"
V = "1.2.3"


def test_env_pip_list_is_pyproject_dependencies() -> None:
    env = yaml.safe_load((ENVS / "omicsclip.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pip == deps
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


def test_no_direct_url_is_an_index_install() -> None:
    assert pip_args_from_direct_url(None, V) == ["omicsclip==1.2.3"]
    assert pip_args_from_direct_url({}, V) == ["omicsclip==1.2.3"]


def test_local_wheel(tmp_path: Path) -> None:
    whl = tmp_path / "dir with space" / "omicsclip-1.2.3-py3-none-any.whl"
    whl.parent.mkdir()
    whl.write_bytes(b"")
    url = whl.as_uri()  # percent-encodes the space
    assert "%20" in url
    assert pip_args_from_direct_url({"url": url, "archive_info": {"hashes": {}}}, V) == [str(whl)]
    # the wheel was deleted since: fall back to the release
    whl.unlink()
    assert pip_args_from_direct_url({"url": url, "archive_info": {}}, V) == ["omicsclip==1.2.3"]


def test_local_folder_and_editable(tmp_path: Path) -> None:
    src = tmp_path / "omicsclip src"
    src.mkdir()
    assert pip_args_from_direct_url({"url": src.as_uri(), "dir_info": {}}, V) == [str(src)]
    assert pip_args_from_direct_url({"url": src.as_uri(), "dir_info": {"editable": True}}, V) == ["-e", str(src)]
    assert pip_args_from_direct_url({"url": (tmp_path / "gone").as_uri(), "dir_info": {"editable": True}},
                                    V) == ["omicsclip==1.2.3"]


def test_vcs_and_remote_archive() -> None:
    git = {"url": "https://github.com/org/omicsclip.git",
           "vcs_info": {"vcs": "git", "commit_id": "abc123", "requested_revision": "main"}}
    assert pip_args_from_direct_url(git, V) == ["omicsclip @ git+https://github.com/org/omicsclip.git@abc123"]
    url = "https://example.org/omicsclip-1.2.3.tar.gz"
    assert pip_args_from_direct_url({"url": url, "archive_info": {}}, V) == [f"omicsclip @ {url}"]


def test_the_running_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """This environment's omicsclip: editable from this checkout in development, a wheel file in CI's
    installed-package check, or a plain release."""
    import importlib.metadata as md

    dist = md.distribution("omicsclip")
    args = pip_args()
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable"):
        assert args == ["-e", str(REPO)]
    elif direct:
        assert Path(args[-1]).exists()
    else:
        assert args == [f"omicsclip=={dist.version}"]
    monkeypatch.delenv(install.ENV_VAR, raising=False)
    monkeypatch.delenv("OMICSCLIP_REPO", raising=False)
    assert shlex.split(pip_spec()) == args


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(install.ENV_VAR, "omicsclip==9.9")
    assert pip_spec() == "omicsclip==9.9"
    monkeypatch.delenv(install.ENV_VAR)
    monkeypatch.setenv("OMICSCLIP_REPO", "/src/my omicsclip")
    assert shlex.split(pip_spec()) == ["-e", "/src/my omicsclip"]


def _post_deploy(tmp_path: Path, spec: str | None) -> subprocess.CompletedProcess:
    """Run the post-deploy script with a stand-in `python` that prints its arguments one per line."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (fake / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in (install.ENV_VAR, "OMICSCLIP_REPO")}
    env["PATH"] = f"{fake}{os.pathsep}{env.get('PATH', '')}"
    if spec is not None:
        env[install.ENV_VAR] = spec
    return subprocess.run(["bash", str(ENVS / "omicsclip.post-deploy.sh")], capture_output=True, text=True,
                          env=env, timeout=30)


@pytest.mark.parametrize("args", [["-e", "/src/my omicsclip"], ["/w/omicsclip-0.1.0-py3-none-any.whl"],
                                  ["omicsclip @ git+https://h/o.git@abc"], ["omicsclip==0.1.0"]])
def test_post_deploy_installs_the_spec(tmp_path: Path, args: list[str]) -> None:
    res = _post_deploy(tmp_path, shlex.join(args))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["-m", "pip", "install", "--no-deps", *args]


def test_post_deploy_without_spec_says_why(tmp_path: Path) -> None:
    res = _post_deploy(tmp_path, None)
    assert res.returncode == 1
    assert "OMICSCLIP_PIP_SPEC is not set" in res.stderr
    assert not res.stdout
