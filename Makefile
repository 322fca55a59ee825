# Everything a newcomer or CI needs; each target installs what it uses.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install run demo test test-fast check-campaigns test-project lint bench bench-smoke

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

# The shipped campaigns, templates, reps and scoring: valid, and their campaign tests pass. (The test suite
# never reads them: it has its own copy in tests/fixtures/project.)
check-campaigns: install
	$(BIN)/nurture validate .
	$(BIN)/nurture test

# Refresh the tests' own copy of the project files from the checkout, after a deliberate change to them.
test-project:
	rm -rf tests/fixtures/project/campaigns tests/fixtures/project/templates tests/fixtures/project/examples
	cp -R campaigns templates examples scoring.yaml reps.yaml tests/fixtures/project/
	rm -rf tests/fixtures/project/examples/tutorial  # the README's tutorial is run from examples/tutorial itself

# Without the integration and slow suites: the inner loop while developing.
test-fast: install
	$(BIN)/pytest -m "not integration and not slow"

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every figure of bench/README.md (about 15 minutes on 2 idle cores; no other load while it runs).
bench: install
	$(BIN)/python bench/import_leads.py --rows 100000 --runs 3
	$(BIN)/python bench/enroll.py --leads 100000 --runs 3
	$(BIN)/python bench/tick_cost.py --redis
	$(BIN)/python bench/send_throughput.py --leads 5000 --runs 3 --threads 4
	$(BIN)/python bench/alert_latency.py --scaled --via beacon --events 1000 --runs 3
	$(BIN)/python bench/alert_latency.py --embedded --via beacon --events 1000 --runs 1
	$(BIN)/python bench/tracking_rps.py --runs 3 --seconds 5
	$(BIN)/python bench/dashboard.py --leads 100000 --runs 3
	$(BIN)/python bench/token_timing.py
	$(BIN)/python bench/score_decay.py --leads 100000 --runs 3

# The same scripts at toy sizes, so they never rot (CI runs this; no figure is asserted).
bench-smoke: install
	$(BIN)/python bench/import_leads.py --smoke
	$(BIN)/python bench/enroll.py --smoke
	$(BIN)/python bench/tick_cost.py --smoke
	$(BIN)/python bench/send_throughput.py --smoke
	$(BIN)/python bench/alert_latency.py --via beacon --events 20 --runs 1 --warmup 2
	$(BIN)/python bench/tracking_rps.py --smoke
	$(BIN)/python bench/dashboard.py --leads 500 --runs 1
	$(BIN)/python bench/token_timing.py --smoke
	$(BIN)/python bench/score_decay.py --smoke
