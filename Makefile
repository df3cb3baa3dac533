# Two set-up commands on a fresh machine: `make demo` (the whole Snakemake pipeline on synthetic data) and
# `make test`. Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: demo test lint venv clean-demo

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

lint: venv
	$(BIN)/ruff check pipeline cli tests bench

clean-demo:
	rm -rf demo_out
