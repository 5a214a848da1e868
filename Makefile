# avdag — one-command set-up: every target creates .venv and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
AVDAG_HOME ?= $(CURDIR)/.avdag
export AVDAG_HOME
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test ui bench install clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed

## Generate the sample batch and materialize every asset for it into $(AVDAG_HOME).
demo: $(VENV)/.installed
	$(PY) -m avdag.cli demo

## Run the test suite (unit, asset, sensor, end-to-end on a small batch).
test: $(VENV)/.installed
	$(PY) -m pytest -q

## Open the Dagster UI on the demo's instance (http://127.0.0.1:3000).
ui: $(VENV)/.installed
	$(PY) -m avdag.cli ui

## Benchmarks: side-by-side ratios, printed (never asserted in tests).
bench: $(VENV)/.installed
	$(PY) -m avdag_tests.bench.bench_ingest

clean:
	rm -rf $(AVDAG_HOME)
