# Two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench dist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dentally-notifier demo

test: $(STAMP)
	$(BIN)/ruff check notifier tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check notifier tests bench
	$(BIN)/mypy

# The wheel and the sdist, in dist/ (docs/deploy.md installs from them).
dist: $(STAMP)
	$(BIN)/python -m build

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/deliver.py

clean:
	rm -rf $(VENV) .venv-lowest .venv-tools dist build .pytest_cache .mypy_cache .ruff_cache .hypothesis
