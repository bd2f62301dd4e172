# `make demo` and `make test` work on a fresh machine: they create .venv, install the pinned
# CPU build of torch first (so pip never pulls a multi-GB CUDA build), then this package.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench lint clean

# CONSTRAINTS pins every other dependency to the versions tested together (constraints.txt);
# `make setup CONSTRAINTS=` takes the newest the package metadata allows instead
CONSTRAINTS ?= constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev,benchmarks,peft,quantize,lmeval,ray,slurm,dp]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/unlearn-audit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
