# `make test` and `make demo` bootstrap .venv from nothing (Python 3.10+ on PATH): they install
# exactly requirements.lock (versions and hashes), then the project itself without resolving.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# The uv that installs the lock is itself pinned by it.
UV_VERSION = $(shell sed -n 's/^uv==\([^ ;]*\).*/\1/p' $(LOCK))
# One universal lock for every supported Python and platform; `make lock` re-resolves it.
LOCK_FLAGS := pyproject.toml --extra dev --generate-hashes --universal --python-version 3.10 \
	-o $(LOCK)
# The packages README's "tested with" line names (tests/test_install.py checks it).
KEY_PACKAGES := torch|torchvision|ray|optuna|mlflow|numpy|pyarrow

.PHONY: venv lock test-latest test-with demo test test-slow test-all lint bench bench-table bench-gpu clean

venv: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --python $(BIN)/python --require-hashes $(LOCK)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	@# A lock older than pyproject's requirements fails here, naming what is missing.
	$(BIN)/uv pip check --quiet --python $(BIN)/python || \
		{ echo "$(LOCK) does not satisfy pyproject.toml: run make lock"; exit 1; }
	touch $(STAMP)

# For the recipes below: a throwaway venv holding the locked uv, removed when the recipe ends.
define throwaway_venv
tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
$(PYTHON) -m venv "$$tmp/venv"; \
"$$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); \
uv="$$tmp/venv/bin/uv"; py="$$tmp/venv/bin/python"
endef

# Re-resolve the lock from pyproject's ranges (newest allowed versions); then run `make test`.
lock:
	@set -e; $(throwaway_venv); "$$uv" pip compile --quiet --upgrade $(LOCK_FLAGS)
	@echo "$(LOCK) re-resolved: $$(grep -E '^($(KEY_PACKAGES))==' $(LOCK) | cut -d' ' -f1 | tr '\n' ' ')"

# Try an upgrade in one command: a throwaway venv with the newest versions pyproject allows,
# then lint and the default suite there. Leaves .venv and the lock untouched.
test-latest:
	@set -e; $(throwaway_venv); \
	"$$uv" pip install --quiet --python "$$py" --upgrade --resolution highest -e '.[dev]'; \
	"$$uv" pip list --python "$$py" | grep -E '^($(KEY_PACKAGES))[[:space:]]'; \
	"$$tmp/venv/bin/ruff" check . && "$$tmp/venv/bin/mypy" && "$$tmp/venv/bin/lint-imports" && \
	"$$tmp/venv/bin/pytest" -p no:cacheprovider

# One package at another version, the rest as locked, e.g.
#   make test-with PKG=optuna==5.0.0 TESTS=tests/study/test_search.py
TESTS ?=
test-with:
	@test -n "$(PKG)" || { echo "usage: make test-with PKG=name==version [TESTS=paths]"; exit 2; }
	@set -e; $(throwaway_venv); \
	"$$uv" pip sync --quiet --python "$$py" --require-hashes $(LOCK); \
	"$$uv" pip install --quiet --python "$$py" '$(PKG)'; \
	"$$uv" pip install --quiet --python "$$py" --no-deps --no-build-isolation -e .; \
	"$$uv" pip list --python "$$py" | grep -E '^($(KEY_PACKAGES))[[:space:]]'; \
	"$$tmp/venv/bin/pytest" -p no:cacheprovider $(TESTS)

# A fresh study name each time, so `make demo` can be run again into the same MLflow store.
demo: $(STAMP)
	$(BIN)/apc run --name demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

test-all: $(STAMP)
	$(BIN)/pytest -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# CPU only, even on a GPU machine: gpu_epoch runs its small CPU epoch (128 images) there.
bench: $(STAMP)
	$(BIN)/python -m bench.matching_overhead
	$(BIN)/python -m bench.metrics_throughput
	$(BIN)/python -m bench.eval_throughput
	$(BIN)/python -m bench.sweep_overhead
	$(BIN)/python -m bench.scaling
	$(BIN)/python -m bench.early_stopping
	$(BIN)/python -m bench.pruned_latency
	$(BIN)/python -m bench.quantized_latency
	$(BIN)/python -m bench.jpeg_decode
	$(BIN)/python -m bench.gpu_epoch --device cpu
	@# The replay needs the committed table; `make bench-table` makes (or completes) it.
	@if [ -f $(SEARCH_TABLE) ]; then $(BIN)/python -m bench.search_efficiency --processes 2; \
	else echo "bench.search_efficiency skipped: no $(SEARCH_TABLE) (make bench-table)"; fi

# The tabulated search benchmark (docs/benchmarks.md): the demo's distillation trial over a
# grid of its search space, every epoch's metrics, two grid points at a time. Tens of minutes
# on 2 cores; resumable (a finished grid point is kept), so run it again after an interruption.
# Not part of `bench`: the table is committed, and remade only when the trainable changes.
SEARCH_TABLE := bench/tables/search_table.parquet
bench-table: $(STAMP)
	$(BIN)/python -m bench.make_search_table --processes 2 --out $(SEARCH_TABLE)

# On a CUDA machine: the GPU tests, then one epoch of the paper's KD + SWA trial (5717
# generated VOC images) in fp32, bf16 and bf16 + channels_last, against the 5 s goal.
bench-gpu: $(STAMP)
	$(BIN)/pytest -m gpu
	$(BIN)/python -m bench.gpu_epoch --device cuda

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
