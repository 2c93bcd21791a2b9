# Two commands do all set-up on a fresh machine with Python 3.11+ and make:
#   make demo   the main job on the embedded default (SQLite under ./var)
#   make test   the whole suite: lint, types, layering, tests on SQLite and PostgreSQL
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint serve bench mutation clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit("mlcanary needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mlcanary --data-dir var demo

serve: $(STAMP)
	$(BIN)/mlcanary --data-dir var serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/storage_bench.py

mutation: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,mutation]'
	$(BIN)/python bench/mutation.py

clean:
	rm -rf $(VENV) var mutants .pytest_cache .mypy_cache .ruff_cache
