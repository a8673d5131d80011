# Two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench dist soak mutants clean

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
	$(BIN)/python bench/hints.py

# The long fault campaign: `make soak` (30 minutes), or e.g.
# `make soak ARGS='--seed 42 --minutes 5'`; `--enable all` adds the faults left off while
# other issues fix them. Needs a Redis: REDIS_URL, default redis://127.0.0.1:6379/0.
soak: $(STAMP)
	$(BIN)/python -m tests.campaign.run $(or $(ARGS),--minutes 30)

# Each safety rule removed in turn: the campaign must fail (see tests/campaign/mutants.py).
mutants: $(STAMP)
	$(BIN)/python -m tests.campaign.mutants $(ARGS)

clean:
	rm -rf $(VENV) .venv-lowest .venv-tools dist build .pytest_cache .mypy_cache .ruff_cache .hypothesis
