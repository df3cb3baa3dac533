"""How to install the running omicsclip into another environment (the workflow's ``--sdm conda`` env).

The conda environment (``envs/omicsclip.yaml``) installs omicsclip's dependencies; its post-deploy script then
installs omicsclip itself with ``pip install --no-deps`` and the arguments computed here from the way the running
omicsclip was installed (PEP 610 ``direct_url.json`` in its ``.dist-info``):

=========================================  ==========================================================
installed from                             pip arguments
=========================================  ==========================================================
a local wheel or sdist file                that file
a local folder (``pip install .``)         that folder
a local folder, editable (``pip -e .``)    ``-e`` that folder
a VCS URL (``pip install git+https://…``)  ``omicsclip @ git+https://…@<commit>``
a remote archive URL                       ``omicsclip @ <url>``
a package index (no ``direct_url.json``)   ``omicsclip==<version>``
=========================================  ==========================================================

A local file or folder that no longer exists falls back to ``omicsclip==<version>``. Pure Python (stdlib only),
so that it is importable and testable without Snakemake.
"""

from __future__ import annotations

import json
import os
import shlex
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["ENV_VAR", "pip_args", "pip_args_from_direct_url", "pip_spec"]

DIST = "omicsclip"
ENV_VAR = "OMICSCLIP_PIP_SPEC"  # read by envs/omicsclip.post-deploy.sh


def _local_path(url: str) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def pip_args_from_direct_url(direct_url: dict | None, version: str, *, name: str = DIST) -> list[str]:
    """``pip install --no-deps`` arguments that reinstall ``name`` as described by its ``direct_url.json``."""
    pinned = [f"{name}=={version}"]
    if not direct_url or not direct_url.get("url"):
        return pinned
    url = direct_url["url"]
    local = _local_path(url)
    if "vcs_info" in direct_url:
        vcs = direct_url["vcs_info"]
        rev = vcs.get("commit_id") or vcs.get("requested_revision")
        scheme = f"{vcs.get('vcs', 'git')}+"
        return [f"{name} @ {'' if url.startswith(scheme) else scheme}{url}{'@' + rev if rev else ''}"]
    if "dir_info" in direct_url:
        if local is None or not local.is_dir():
            return pinned
        return ["-e", str(local)] if direct_url["dir_info"].get("editable") else [str(local)]
    # archive_info (or an unknown kind): a wheel/sdist file or a remote archive
    if local is not None:
        return [str(local)] if local.is_file() else pinned
    return [f"{name} @ {url}"]


def pip_args(name: str = DIST) -> list[str]:
    """``pip install --no-deps`` arguments for the installed distribution ``name``."""
    dist = metadata.distribution(name)
    text = dist.read_text("direct_url.json")
    try:
        direct_url = json.loads(text) if text else None
    except json.JSONDecodeError:
        direct_url = None
    return pip_args_from_direct_url(direct_url, dist.version, name=name)


def pip_spec(name: str = DIST) -> str:
    """:func:`pip_args` as one shell-quoted string (the post-deploy script splits it with ``eval set --``).

    ``$OMICSCLIP_PIP_SPEC`` set by the user wins; the older ``$OMICSCLIP_REPO`` (a checkout) still works.
    """
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    if os.environ.get("OMICSCLIP_REPO"):
        return shlex.join(["-e", os.environ["OMICSCLIP_REPO"]])
    return shlex.join(pip_args(name))
