# Two set-up commands on a fresh machine: `make demo` (the whole Snakemake pipeline on synthetic data) and
# `make test`. Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: demo test test-installed wheel lint venv clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/omicsclip demo --out demo_out --cores $(CORES)

test: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

# The wheel installed (with its dependencies) into a fresh venv outside the tree, every stage and the packaged
# workflow run with it from outside the tree (tests/e2e/installed.sh; a few minutes; .ci/run runs it).
test-installed: venv
	OMICSCLIP_WHEEL_TEST=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e/test_installed.py

# dist/omicsclip-<version>-py3-none-any.whl (build/ removed first: setuptools would reuse stale files from it)
wheel: venv
	rm -rf build
	$(BIN)/python -m pip wheel --no-deps -w dist .

lint: venv
	$(BIN)/ruff check pipeline cli workflow tests bench

clean-demo:
	rm -rf demo_out
