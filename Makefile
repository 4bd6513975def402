# hfl — secure hierarchical federated learning for healthcare.
# `make help` lists the targets. Everything runs from a local virtualenv (.venv) with pinned packages.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup demo console test test-unit test-integration lint proto proto-check bench image clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): requirements/runtime.txt requirements/dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "hfl needs Python 3.11"' \
	  || { echo "hfl needs Python 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
	@echo "Setting up $(VENV) with pinned packages (first time: about a minute) ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install pinned dependencies

demo: $(STAMP) ## run a whole federation locally (authority, 7 validators, leader, 2 fogs, 8 facilities)
	$(VENV)/bin/hfl demo $(DEMO_ARGS)

console: $(STAMP) ## a local federation that keeps running, with the console on 127.0.0.1:8501 (set HFL_CONSOLE_PASSWORD)
	$(VENV)/bin/hfl demo --console $(DEMO_ARGS)

test: $(STAMP) ## run unit, integration and (when Docker answers) container tests
	@scripts/test-deps.sh
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## unit tests only
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) ## multi-process tests on loopback
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: $(STAMP) proto-check ## ruff, mypy, import contracts and the generated-code drift check
	$(VENV)/bin/ruff check hfl services tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

proto: $(STAMP) ## regenerate hfl/proto from protos/
	PYTHON=$(PY) scripts/gen_protos.sh

proto-check: $(STAMP) ## fail if regenerating the stubs would change them
	@tmp=$$(mktemp -d) && PYTHON=$(PY) scripts/gen_protos.sh $$tmp \
	  && diff -r -x __pycache__ $$tmp hfl/proto && echo "generated code is up to date" ; rc=$$?; rm -rf $$tmp; exit $$rc

bench: $(STAMP) ## run the benchmarks and write bench/results/*.json
	$(PY) -m bench.run_all

image: ## build the container image offline (no registry needed), see docs/offline-build.md
	bash deploy/image/build.sh

clean: ## remove the virtualenv, caches and demo runs
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
