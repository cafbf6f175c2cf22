# Thin aliases over the gh200 CLI. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.9
CACHE := $(or $(GH200_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/gh200)
UV_VENV := $(CACHE)/uv-$(UV_VERSION)
UV := $(UV_VENV)/bin/uv
VENV := .venv
GH200 := $(VENV)/bin/gh200
PY := $(VENV)/bin/python
PROFILE ?= local-tiny
INV ?= ansible/inventory/example

.PHONY: help setup apt demo test test-unit lint lock provision images models deploy smoke verify \
        bench-graft bench-client bench-gate mutation

help:
	@echo "make demo   - build the llama.cpp image, deploy local-tiny, smoke-benchmark it, print the report"
	@echo "make test   - install what the suite needs and run all of it (lint, types, unit, engine, ansible)"
	@echo "make setup  - create .venv with the locked dependencies"
	@echo "make mutation [MODULES=stats,render] [JOBS=N] [SURVIVORS=1] - share of mutants the unit tests kill, per core module (slow)"
	@echo "make lint | lock | provision | images | models | deploy | smoke | verify | bench-graft | bench-client"
	@echo "make bench-gate [ARGS=\"--deployments 10 --budget-min 20\"] - detection and false-alarm rates of the baseline gate on local-tiny (real llama-server)"

$(UV):
	python3 -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install -q uv==$(UV_VERSION)

apt:
	@bash scripts/ensure-apt.sh

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen -q
	@touch $@

setup: apt $(VENV)/.synced

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check tools tests scripts
	$(VENV)/bin/ruff format --check tools tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/yamllint -s profiles ansible
	cd ansible && ../$(VENV)/bin/ansible-lint --profile production -q

test: setup lint
	@# The real vLLM source the patch series targets (also cached for the profile flag checks).
	$(GH200) patches check --vllm 0.33.0 --no-runtime
	GH200_REQUIRE_ENGINE=1 $(VENV)/bin/pytest -p no:cacheprovider --durations=25

# A benchmark, not part of `make test`: mutmut over the core decision modules (scripts/mutation.py --list).
MODULES ?=
mutation: $(VENV)/.synced
	$(PY) scripts/mutation.py --modules "$(MODULES)" $(if $(JOBS),--jobs $(JOBS)) $(if $(SURVIVORS),--survivors)

test-unit: $(VENV)/.synced
	$(VENV)/bin/pytest tests/unit -q

demo: setup
	$(GH200) demo

lock: setup
	$(GH200) lock

provision: setup
	$(GH200) provision --inventory $(INV)

images: setup
	$(GH200) images build vllm --platform linux/arm64

models: setup
	$(GH200) models fetch $(PROFILE)

deploy: setup
	$(GH200) deploy $(PROFILE)

smoke: setup
	$(GH200) smoke $(PROFILE)

verify: setup
	$(GH200) verify --inventory $(INV)

bench-graft: setup
	$(PY) -m gh200.checkpoints.bench_graft

bench-client: setup
	$(PY) -m gh200.orchestrate.bench_client

bench-gate: setup
	$(PY) -m gh200.baseline.bench_gate $(ARGS)
