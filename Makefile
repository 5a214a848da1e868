# avdag — one-command set-up: every target creates .venv and installs what it needs; `make test` also
# installs the Debian packages the tests use (ffmpeg, chromium) when they are missing.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
AVDAG_HOME ?= $(CURDIR)/.avdag
export AVDAG_HOME
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-slow test-cosmos ui bench install system-packages lint wheel-check clean

## The venv: avdag (editable) with its test extra and every dependency, from pip. Redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON) -m venv"; $(PYTHON) -m venv $(VENV); }
	@echo "installing with pip into $(VENV) (first run, or after pyproject.toml changes): avdag (editable) and" \
		"its [test] extra with their dependencies (torch, torchvision, transformers, dagster, ...); takes minutes"
	@log=$(VENV)/pip-install.log; \
	if ! $(PY) -m pip install --progress-bar off -e '.[test]' >$$log 2>&1; then \
		tail -n 40 $$log >&2; echo "pip install failed; the whole log: $$log" >&2; exit 1; \
	fi; \
	grep -E '^Successfully installed' $$log | fold -s -w 120 || echo "(pip: nothing new to install)"
	@touch $@

install: $(VENV)/.installed

## Debian packages the tests use: ffmpeg's shared libraries let torchcodec load (qwen-vl-utils' frame reader,
## the reference avdag's decoder is checked against); chromium is the browser Playwright drives in the UI test
## (`playwright install` cannot download its own); postgresql's initdb and pg_ctl start the throwaway server the
## Postgres-backed tests use (Debian keeps them off PATH, in /usr/lib/postgresql/<version>/bin); redis-server is
## the broker of the Celery executor's test. Installed with apt-get when missing: as root, or with passwordless
## sudo; otherwise this stops and says what to run.
SYSTEM_PACKAGES := ffmpeg chromium postgresql redis-server
system-packages:
	@present() { case "$$1" in \
		postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1;; \
		*) command -v "$$1" >/dev/null 2>&1;; \
	esac; }; \
	missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do present $$pkg || missing="$$missing $$pkg"; done; \
	missing="$${missing# }"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else \
		echo "avdag's tests need Debian packages that are not installed: $$missing" >&2; \
		echo "make cannot install them (not root, and no passwordless sudo). Run:" >&2; \
		echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing" >&2; \
		echo "then run make test again." >&2; \
		exit 1; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "avdag's tests need $$missing (Debian packages), and this machine has no apt-get: install them" \
			"with its package manager, then run make test again." >&2; \
		exit 1; \
	fi; \
	echo "installing Debian packages: $$missing (first run only)"; \
	log="$$(mktemp)"; started=$$SECONDS; \
	if ! { $$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } >"$$log" 2>&1; then \
		tail -n 40 "$$log" >&2; rm -f "$$log"; \
		echo "apt-get could not install: $$missing" >&2; exit 1; \
	fi; \
	rm -f "$$log"; \
	for pkg in $$missing; do present $$pkg || { echo "$$pkg is still missing after apt-get install" >&2; exit 1; }; done; \
	echo "installed Debian packages: $$missing ($$((SECONDS - started))s)"

## Generate the sample batch and materialize every asset for it into $(AVDAG_HOME).
demo: $(VENV)/.installed
	$(PY) -m avdag.cli demo

## Lint, then the test suite (unit, asset, sensor, browser, end-to-end on a small batch).
test: system-packages $(VENV)/.installed lint
	$(PY) -m pytest -q -m "not slow"

## The slow suites (marked `slow`): the platform through the real Dagster daemon, steps on real Celery workers,
## long benchmarks' smoke runs.
## CI runs them after `make test`.
test-slow: system-packages $(VENV)/.installed
	$(PY) -m pytest -q -m slow

## Lint: ruff's checks and its formatter in check mode (settings in pyproject.toml). Fixes nothing.
lint: $(VENV)/.installed
	@status=0; \
	echo "ruff check ."; $(PY) -m ruff check . || status=1; \
	echo "ruff format --check ."; $(PY) -m ruff format --check . || status=1; \
	exit $$status

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

## The wheel as users get it: built (`pip wheel`, not editable), checked for what it must and must not hold,
## installed with its dependencies into a fresh venv, and `avdag demo` run from another folder. Needs no .venv.
## The script is below (WHEEL_CHECK_SH); each phase prints its time.
wheel-check: export WHEEL_CHECK_SH = $(_WHEEL_CHECK_SH)
wheel-check: export WHEEL_CHECK_PYTHON = $(PYTHON)
wheel-check:
	@bash -c "$$WHEEL_CHECK_SH"

## Open the Dagster UI on the demo's instance (http://127.0.0.1:3000).
ui: $(VENV)/.installed
	$(PY) -m avdag.cli ui

## Benchmarks: side-by-side ratios with each goal met or MISSED (never asserted in tests). Every one runs
## with --check; `make bench` runs them all, then exits 1 naming those that missed a goal.
## BENCH_ARGS=--quick passes their quick mode.
BENCHMARKS = bench_ingest bench_captioning bench_platform bench_judge bench_offline_judge
bench: $(VENV)/.installed
	@missed=""; for name in $(BENCHMARKS); do \
	  echo "== $$name"; \
	  $(PY) -m avdag_tests.bench.$$name --check $(BENCH_ARGS) || missed="$$missed $$name"; \
	done; \
	if [ -n "$$missed" ]; then echo "make bench: goals missed in:$$missed"; exit 1; fi; \
	echo "make bench: every goal met"

clean:
	rm -rf $(AVDAG_HOME)

define _WHEEL_CHECK_SH
set -euo pipefail
started=$$SECONDS
phase_start=$$SECONDS
phase() {  # phase NAME: print how long the phase that just ended took
	echo "wheel-check: $$1 took $$((SECONDS - phase_start))s"
	phase_start=$$SECONDS
}
tmp="$$(mktemp -d -t avdag-wheel-check.XXXXXX)"
trap 'status=$$?; if [ $$status = 0 ]; then rm -rf "$$tmp"; else echo "wheel-check FAILED (exit $$status); kept $$tmp" >&2; fi' EXIT

echo "wheel-check: building the wheel (pip wheel . --no-deps) into $$tmp/dist"
rm -rf build  # setuptools' staging folder; a stale one could put removed files in the wheel
"$$WHEEL_CHECK_PYTHON" -m pip wheel . --no-deps --progress-bar off -q -w "$$tmp/dist"
wheel=$$(ls "$$tmp"/dist/avdag-*.whl)
phase build

"$$WHEEL_CHECK_PYTHON" - "$$wheel" <<'PY'
import sys, zipfile
from pathlib import Path

wheel = zipfile.ZipFile(sys.argv[1])
names = wheel.namelist()
problems = [f"ships tests: {n}" for n in names if n.startswith("avdag_tests/")]
# Package data, byte for byte: the prompts and workspace.yaml through avdag/'s links to the top-level sources.
required = {f"avdag/prompts/{p.name}": p for p in sorted(Path("prompts").iterdir()) if p.is_file()}
required["avdag/workspace.yaml"] = Path("workspace.yaml")
required["avdag/dagster.yaml"] = Path("avdag/dagster.yaml")
required["avdag/dagster-production.yaml"] = Path("avdag/dagster-production.yaml")
required |= {f"avdag/demo/sample_data/real/{p.name}": p for p in sorted(Path("avdag/demo/sample_data/real").iterdir())}
for name, source in required.items():
    if name not in names:
        problems.append(f"lacks {name}")
    elif wheel.read(name) != source.read_bytes():
        problems.append(f"{name} differs from {source}")
prompts = [n for n in names if n.startswith("avdag/prompts/")]
top = sorted({n.split("/")[0] for n in names})
print(f"wheel-check: {Path(sys.argv[1]).name}: {len(names)} files, top level {top}; "
      f"prompts {len(prompts)} files, sample clip folder {len(required) - len(prompts) - 3} files, workspace.yaml, "
      f"dagster.yaml, dagster-production.yaml")
if problems:
    sys.exit("wheel-check: the wheel is wrong:\n  " + "\n  ".join(problems))
PY
phase "content check"

echo "wheel-check: fresh venv in $$tmp/venv"
"$$WHEEL_CHECK_PYTHON" -m venv "$$tmp/venv"
phase venv

echo "wheel-check: pip install of the wheel with its dependencies"
if ! "$$tmp/venv/bin/python" -m pip install --progress-bar off "$$wheel" >"$$tmp/pip-install.log" 2>&1; then
	tail -n 40 "$$tmp/pip-install.log" >&2
	exit 1
fi
grep -E '^Successfully installed' "$$tmp/pip-install.log" | fold -s -w 120
phase "pip install"

mkdir -p "$$tmp/work" "$$tmp/home"
cd "$$tmp/work"
where=$$(env -u PYTHONPATH "$$tmp/venv/bin/python" -c 'import avdag; print(avdag.__file__)')
case "$$where" in "$$tmp/venv/"*) ;; *) echo "wheel-check: avdag imported from $$where, not the venv" >&2; exit 1;; esac
echo "wheel-check: avdag demo --clips 4 in $$tmp/work (AVDAG_HOME=$$tmp/home, AVDAG_SFT_STEPS=20)"
for var in $$(compgen -e | grep -E '^(AVDAG_|OPENAI_)' || true); do unset "$$var"; done  # the defaults, as a user gets them
env -u PYTHONPATH -u DAGSTER_HOME AVDAG_HOME="$$tmp/home" HF_HUB_OFFLINE=1 AVDAG_SFT_STEPS=20 \
	"$$tmp/venv/bin/avdag" demo --clips 4
phase "avdag demo"
echo "wheel-check: passed in $$((SECONDS - started))s"
endef
