# `make test` and `make demo` bootstrap .venv from nothing (Python 3.10+ on PATH).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow test-all lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A fresh study name each time, so `make demo` can be run again into the same MLflow store.
demo: $(STAMP)
	$(BIN)/apc run --name demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

test-all: $(STAMP)
	$(BIN)/pytest -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.matching_overhead
	$(BIN)/python -m bench.metrics_throughput
	$(BIN)/python -m bench.eval_throughput
	$(BIN)/python -m bench.sweep_overhead
	$(BIN)/python -m bench.scaling
	$(BIN)/python -m bench.early_stopping
	$(BIN)/python -m bench.pruned_latency

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
