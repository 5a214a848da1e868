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

.PHONY: demo test test-cosmos ui bench install clean

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

## cosmos-rl's own config classes check the TOML avdag generates. This installs only cosmos-rl's
## config layer (no GPU stack) beside the venv, in $(COSMOS_SITE); GPU nodes use `pip install 'avdag[cosmos]'`.
COSMOS_SITE ?= .cosmos-site
$(COSMOS_SITE)/.installed:
	$(PY) -m pip install -q --no-deps --target $(COSMOS_SITE) cosmos-rl==0.4.7 strenum==0.5.0 toml==0.10.2 \
		datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18 xxhash==4.1.0 httpx==0.28.1 msgpack==1.2.4 \
		nvidia-ml-py==13.615.71 diffusers==0.36.0 redis==8.1.0
	@touch $@

test-cosmos: $(VENV)/.installed $(COSMOS_SITE)/.installed
	PYTHONPATH=$(COSMOS_SITE) $(PY) -m pytest -q avdag_tests/core/training/test_cosmos_rl_config.py avdag_tests/core/training/test_cosmos_rl_launcher.py

## Open the Dagster UI on the demo's instance (http://127.0.0.1:3000).
ui: $(VENV)/.installed
	$(PY) -m avdag.cli ui

## Benchmarks: side-by-side ratios, printed (never asserted in tests).
bench: $(VENV)/.installed
	$(PY) -m avdag_tests.bench.bench_ingest
	$(PY) -m avdag_tests.bench.bench_captioning

clean:
	rm -rf $(AVDAG_HOME)
