#!/usr/bin/env bash
# Runs once inside the freshly created conda environment (snakemake --sdm conda): installs omicsclip itself.
# The workflow exports OMICSCLIP_PIP_SPEC, the shell-quoted `pip install` arguments that reinstall the omicsclip
# running Snakemake: its wheel file, its source folder (`-e DIR` when editable), its VCS URL or
# `omicsclip==VERSION` (omicsclip.workflow.install). Set it yourself to install something else.
set -euo pipefail
if [[ -z "${OMICSCLIP_PIP_SPEC:-}" ]]; then
    echo "omicsclip post-deploy: OMICSCLIP_PIP_SPEC is not set (run this environment through the omicsclip workflow)" >&2
    exit 1
fi
eval "set -- ${OMICSCLIP_PIP_SPEC}"
echo "omicsclip post-deploy: pip install --no-deps $*" >&2
python -m pip install --no-deps "$@"
