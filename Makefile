# The two commands of the README: `make demo` and `make test`. Both set up .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export FINEHARBOR_HOME ?= $(CURDIR)/.fineharbor
# Local state (Dagster instance, catalog.duckdb) lives in FINEHARBOR_STATE, by default the home
# itself, or ./.fineharbor when the home is object storage (s3://...).
STATE := $(or $(FINEHARBOR_STATE),$(if $(findstring ://,$(FINEHARBOR_HOME)),$(CURDIR)/.fineharbor,$(FINEHARBOR_HOME)))
export DAGSTER_HOME ?= $(STATE)/dagster

.PHONY: demo test test-fast bench bench-pipeline ui lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fineharbor demo

test: $(STAMP)
	$(BIN)/pytest

# everything but the tests marked slow (demo, Ray, e2e services, model training): a few minutes
test-fast: $(STAMP)
	$(BIN)/pytest -m 'not slow'

# every stage's benchmark at two sizes, one table; figures appended to bench/results/history.jsonl
# (its `pipeline` stage runs the whole pipeline at 1k and 5k samples; bench-pipeline is the
# scale run: 10k, 30k and 100k samples, about 15 minutes on 2 idle cores, docs/benchmarks.md)
bench: $(STAMP)
	$(BIN)/python -m bench --compare $(BENCH_ARGS)

bench-pipeline: $(STAMP)
	$(BIN)/python -m bench.pipeline $(PIPELINE_ARGS)

ui: $(STAMP)
	$(BIN)/dagster dev -w workspace.yaml

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:  # the local state, and the data when the home is a local directory
	rm -rf $(STATE) $(if $(findstring ://,$(FINEHARBOR_HOME)),,$(FINEHARBOR_HOME))
