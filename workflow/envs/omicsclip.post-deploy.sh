#!/usr/bin/env bash
# Runs once inside the freshly created conda environment: installs omicsclip from your checkout.
set -euo pipefail
pip install --no-deps -e "${OMICSCLIP_REPO:?set OMICSCLIP_REPO to your omicsclip checkout before snakemake --sdm conda}"
