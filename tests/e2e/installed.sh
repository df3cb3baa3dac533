#!/usr/bin/env bash
# The installed package, not the checkout: build the wheel from this source tree, install it (with its declared
# dependencies) into a fresh virtual environment outside the tree, and from a folder outside the tree run every
# stage with the installed `omicsclip` (synth -> ingest -> train -> embed -> index -> query -> finetune -> predict)
# and the packaged Snakemake demo (`omicsclip demo`, small). Checks each stage's outputs and that the omicsclip
# in use is the installed one. Prints the time of each phase.
#
#   tests/e2e/installed.sh [WORKDIR]        (default: a new temporary folder; WORKDIR must be outside the tree)
#
# Run by tests/e2e/test_installed.py when OMICSCLIP_WHEEL_TEST=1 (.ci/run sets it after `make test`).
# PYTHON: the interpreter for the new virtual environment (default python3). REUSE_VENV=1: keep WORKDIR's wheel
# and venv from an earlier run (quick reruns while developing; CI never sets it).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
PYTHON="${PYTHON:-python3}"
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/omicsclip-installed.XXXXXX")}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd -P)"
case "$WORK/" in "$REPO"/*) echo "installed.sh: WORKDIR $WORK is inside the source tree $REPO" >&2; exit 2 ;; esac

fail() { echo "installed.sh: FAILED: $*" >&2; exit 1; }
T0=$SECONDS
phase() { echo "installed.sh: [$((SECONDS - T0)) s] $*"; }
PHASE_START=$SECONDS
timing() { echo "installed.sh: TIMING $1 $((SECONDS - PHASE_START)) s"; PHASE_START=$SECONDS; }
need() { for p in "$@"; do [[ -e "$p" ]] || fail "missing output $p"; done; }

# --- 1. wheel: from a copy of the tree's files (tracked + untracked not ignored), so that no build/ or egg-info
#        left in the checkout can leak stale files into it, and the checkout is left untouched
if [[ "${REUSE_VENV:-}" == 1 && -x "$WORK/venv/bin/omicsclip" ]]; then
    WHEEL="$(ls "$WORK"/dist/omicsclip-*.whl)"
    VPY="$WORK/venv/bin/python"
    phase "reusing $WORK/venv ($WHEEL)"
else
phase "building the wheel from $REPO"
rm -rf "$WORK/src" "$WORK/dist"
mkdir -p "$WORK/src" "$WORK/dist"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf -) | tar -C "$WORK/src" -xf -
BUILD_PY="$PYTHON"
[[ -x "$REPO/.venv/bin/python" ]] && BUILD_PY="$REPO/.venv/bin/python"
"$BUILD_PY" -m pip wheel --no-deps -q -w "$WORK/dist" "$WORK/src" > "$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "wheel build"; }
WHEEL="$(ls "$WORK"/dist/omicsclip-*.whl)"
[[ -f "$WHEEL" ]] || fail "no wheel in $WORK/dist"
echo "WHEEL=$WHEEL"
timing wheel_build

# --- 2. a fresh virtual environment outside the tree; pip resolves the wheel's declared dependencies
phase "installing $(basename "$WHEEL") and its dependencies into $WORK/venv"
rm -rf "$WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q "$WHEEL" > "$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log"; fail "pip install"; }
"$VPY" -m pip check || fail "pip check"
timing venv_install
fi

# nothing of the checkout may be visible from here on
unset PYTHONPATH VIRTUAL_ENV
export PATH="$WORK/venv/bin:$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -F "$REPO" | paste -sd: -)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
RUN="$WORK/run"
rm -rf "$RUN"
mkdir -p "$RUN"
cd "$RUN"

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
FILE="$("$VPY" -c 'import omicsclip; print(omicsclip.__file__)')"
echo "omicsclip.__file__=$FILE"
[[ "$FILE" == "$SITE/omicsclip/"* ]] || fail "omicsclip imported from $FILE, not from $SITE"
[[ "$(command -v omicsclip)" == "$WORK/venv/bin/omicsclip" ]] || fail "omicsclip on PATH is $(command -v omicsclip)"
"$VPY" - "$WHEEL" "$SITE" <<'EOF' || fail "installed package"
import json, sys
from importlib import metadata
from pathlib import Path

import omicsclip.workflow
from omicsclip.config import config_path
from omicsclip.workflow.install import pip_args

wheel, site = sys.argv[1:]
dist = metadata.distribution("omicsclip")
assert json.loads(dist.read_text("direct_url.json"))["url"].endswith(Path(wheel).name), dist.read_text("direct_url.json")
assert pip_args() == [wheel], pip_args()  # what --sdm conda's post-deploy would install
for p in (omicsclip.workflow.snakefile(), config_path("demo.yaml"), config_path("schema.yaml")):
    assert str(p).startswith(site) and p.is_file(), p
print("installed package ok:", dist.version, "entry point", dist.entry_points.select(group="console_scripts")["omicsclip"].value)
EOF

# --- 3. every stage with the installed CLI, tiny settings
phase "installed pipeline in $RUN"
TINY=(--set preprocess.n_hvg=100 --set preprocess.n_pcs=10 --set model.rna_hidden=[32] --set model.prot_hidden=[16]
      --set model.embed_dim=8 --set model.members=1 --set train.epochs=2 --set train.batch_size=128
      --set train.warmup_steps=2 --set train.device=cpu --set train.num_threads=2)
omicsclip synth --out cells.h5ad --cells 400 --genes 200 --proteins 8 --types 4 --seed 1
need cells.h5ad
omicsclip ingest cells.h5ad --out store.zarr
need store.zarr
omicsclip inspect store.zarr --json > inspect.json
need inspect.json
omicsclip train store.zarr --out model "${TINY[@]}"
need model/model.json model/model.safetensors
omicsclip embed store.zarr --model model --out emb.zarr
need emb.zarr
omicsclip index emb.zarr --out index
need index/meta.json
omicsclip query cells.h5ad --model model --index index --out query --k 5
need query/summary.json query/neighbours.tsv query/labels.tsv
omicsclip finetune emb.zarr --labels cell_type --out head --set finetune.epochs=20 --set finetune.ensemble=2
need head/head.json
omicsclip predict cells.h5ad --model model --head head --out predictions.tsv
need predictions.tsv
[[ "$(head -1 predictions.tsv | cut -f1-3)" == $'barcode\tlabel\tprobability' ]] || fail "predictions.tsv header"
[[ "$(($(wc -l < predictions.tsv) - 1))" == 400 ]] || fail "predictions.tsv: expected 400 cells"
timing installed_pipeline

# --- 4. the packaged Snakemake workflow (omicsclip demo), small
phase "omicsclip demo (packaged workflow) in $RUN/demo"
omicsclip demo --out demo --cores 2 \
    --set 'datasets.demo.synthetic={cells: 600, genes: 200, proteins: 10, types: 4, batches: 1, seed: 1}' \
    --set preprocess.n_hvg=150 --set preprocess.n_pcs=10 --set model.rna_hidden=[32] --set model.prot_hidden=[16] \
    --set model.embed_dim=8 --set model.members=1 --set train.epochs=2 --set 'train.temperatures=[0.1, 0.2]' \
    --set train.warmup_steps=2 --set evaluate.labels_per_class=[1,5] --set evaluate.n_draws=1 \
    --set evaluate.n_pcs=10 --set finetune.epochs=20 --set finetune.ensemble=2 > demo.log 2>&1 \
    || { tail -40 demo.log; fail "omicsclip demo"; }
tail -1 demo.log
D=demo/results/demo
need "$D/report.html" "$D/store.zarr" "$D/best/selection.json" "$D/best/model/model.json" "$D/best/embeddings.zarr" \
     "$D/best/index/meta.json" "$D/best/query/summary.json" "$D/best/head/head.json" "$D/best/fewlabel.json" \
     "$D/t0.1/metrics.json" "$D/t0.2/metrics.json"
grep -q "$D/report.html" demo.log || grep -q "report: .*report.html" demo.log || fail "demo did not print the report path"
# the rules ran the installed CLI (never the checkout's)
if grep -rl -F "$REPO/" "$D/logs" demo/.snakemake/log 2>/dev/null | head -1 | grep -q .; then
    fail "the demo's logs mention the source tree $REPO"
fi
omicsclip demo --out demo --cores 2 --dry-run \
    --set 'datasets.demo.synthetic={cells: 600, genes: 200, proteins: 10, types: 4, batches: 1, seed: 1}' \
    --set preprocess.n_hvg=150 --set preprocess.n_pcs=10 --set model.rna_hidden=[32] --set model.prot_hidden=[16] \
    --set model.embed_dim=8 --set model.members=1 --set train.epochs=2 --set 'train.temperatures=[0.1, 0.2]' \
    --set train.warmup_steps=2 --set evaluate.labels_per_class=[1,5] --set evaluate.n_draws=1 \
    --set evaluate.n_pcs=10 --set finetune.epochs=20 --set finetune.ensemble=2 > rerun.log 2>&1 \
    || { tail -20 rerun.log; fail "demo dry run"; }
grep -q "Nothing to be done" rerun.log || { tail -20 rerun.log; fail "a second demo run would redo work"; }
timing demo

phase "all installed-package checks passed (work folder $WORK)"
