# Developer and CI entry points; `make help` lists them. `make test` is what CI runs.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when pyproject.toml is newer than the last install.
VENV_STAMP := $(VENV)/.installed-from-pyproject
TESTBED := PYTHONPATH=hack $(BIN)/python -m testbed

.PHONY: help venv binaries postgres lint unit integration test dev-cluster dev-cluster-down demo crds crds-check

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(VENV_STAMP) ## Create .venv and install the project with its test extras

$(VENV_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

binaries: ## Build etcd, Kubernetes and helm into the versioned cache (slow only the first time)
	hack/build-binaries.sh

postgres: ## Install PostgreSQL from Debian's packages when it is missing
	hack/install-postgres.sh

lint: venv ## ruff check, ruff format --check, mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv ## Unit tests; no test bed needed
	$(BIN)/pytest tests/unit

integration: venv binaries postgres ## Integration tests against a real test bed (one per session)
	$(BIN)/pytest tests/integration

test: venv binaries postgres lint crds-check ## What CI runs: lint, CRD drift, unit and integration tests
	$(BIN)/pytest tests/unit tests/integration

dev-cluster: venv binaries postgres ## Start the test bed in the background and write .dev/env
	$(TESTBED) up

dev-cluster-down: venv ## Stop every process dev-cluster started
	$(TESTBED) down

demo: venv binaries postgres ## The main job end to end: bed, operator, the XGBoost study, results
	PYTHONPATH=hack:. $(BIN)/python hack/demo.py

crds: venv ## Regenerate crds/ from the API models (operator/optuna_operator/api.py)
	$(BIN)/optuna-operator crds --output-dir crds

crds-check: venv ## Fail when crds/ differs from what the models generate
	$(BIN)/optuna-operator crds --output-dir crds --check
