# Two entry points for a fresh machine: `make run` (set up, then the default job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup run test lint bench-core clean

setup: $(VENV)/.installed

# torch is pinned first: the CPU build installs from local disk; an unpinned torch would pull a GPU build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: setup
	$(BIN)/farsync train

# The tests command runs the lint gate first: ruff (lint + format), mypy strict, the import-layers contract.
test: lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples
	$(BIN)/mypy
	$(BIN)/lint-imports

bench-core: setup
	$(BIN)/farsync bench core

clean:
	rm -rf $(VENV) runs .pytest_cache
