# Everything a newcomer or CI needs; each target installs what it uses.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install run demo test test-fast lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The embedded default: SQLite and an outbox folder under ./var, in-process broker and worker threads.
run: install
	$(BIN)/nurture leads import examples/leads.csv
	$(BIN)/nurture run

test: install
	$(BIN)/pytest

# Without the integration and slow suites: the inner loop while developing.
test-fast: install
	$(BIN)/pytest -m "not integration and not slow"

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
