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
# importlib: tests/unit and tests/integration may hold files with the same basename
# (test_chart.py), which the default rootdir-relative import mode refuses to collect.
PYTEST := $(BIN)/pytest --import-mode=importlib

.PHONY: help venv binaries kueue promtool postgres pgbouncer lint unit integration test dev-cluster dev-cluster-down demo demo-down crds crds-check bench faults

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(VENV_STAMP) ## Create .venv and install the project with its test extras

$(VENV_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

binaries: ## Build etcd, Kubernetes and helm into the versioned cache (slow only the first time)
	hack/build-binaries.sh

kueue: ## Build Kueue for the opt-in `kueue` test fixture (10-20 minutes cold, then cached)
	hack/build-kueue.sh

promtool: ## Build promtool for the chart's alert and dashboard query tests (10-15 minutes cold, then cached)
	hack/build-promtool.sh

postgres: ## Install PostgreSQL from Debian's packages when it is missing
	hack/install-postgres.sh

pgbouncer: ## Install PgBouncer from Debian's packages when it is missing (tests and bench run it)
	hack/install-pgbouncer.sh

lint: venv ## ruff check, ruff format --check, mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv ## Unit tests; no test bed needed
	$(PYTEST) tests/unit

integration: venv binaries kueue promtool postgres pgbouncer ## Integration tests against a real test bed (one per session)
	$(PYTEST) tests/integration

test: venv binaries kueue promtool postgres pgbouncer lint crds-check ## What CI runs: lint, CRD drift, unit and integration tests
	$(PYTEST) tests/unit tests/integration

dev-cluster: venv binaries postgres ## Start the test bed in the background and write .dev/env
	$(TESTBED) up

dev-cluster-down: venv ## Stop every process dev-cluster started
	$(TESTBED) down

demo: venv binaries postgres ## The main job end to end: bed, operator, the XGBoost study, results
	PYTHONPATH=hack:. $(BIN)/python hack/demo.py

demo-down: venv ## Stop what `DEMO_KEEP=1 make demo` left running (bed, operator, dashboard)
	$(TESTBED) down --dir .dev/demo-bed

bench: venv postgres pgbouncer ## Benchmarks: status refresh, worker throughput, scale, pool vs Job per trial, PgBouncer (BENCH_SECTIONS)
	PYTHONPATH=hack:. $(BIN)/python -u hack/bench.py

faults: venv binaries postgres ## Fault scenarios (db/API outage, pod deletion, inf, hung trial): recovery time, trials lost
	PYTHONPATH=hack:. $(BIN)/python -u hack/faults.py

crds: venv ## Regenerate crds/ (api/) and the admission policy in deploy/ and the chart (admission.py)
	$(BIN)/optuna-operator crds --output-dir crds
	$(BIN)/optuna-operator crds --output-dir charts/optuna-operator/crds
	$(BIN)/optuna-operator admission-policy --output-dir deploy
	$(BIN)/optuna-operator admission-policy --output-dir charts/optuna-operator/files --chart

crds-check: venv ## Fail when crds/ or the admission policy differ from what the code generates
	$(BIN)/optuna-operator crds --output-dir crds --check
	$(BIN)/optuna-operator crds --output-dir charts/optuna-operator/crds --check
	$(BIN)/optuna-operator admission-policy --output-dir deploy --check
	$(BIN)/optuna-operator admission-policy --output-dir charts/optuna-operator/files --chart --check

# --------------------------------------------------------------------------- images and chart
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
OPERATOR_IMAGE ?= ghcr.io/optuna-operator/operator:$(IMAGE_TAG)
WORKER_IMAGE ?= ghcr.io/optuna-operator/worker:$(IMAGE_TAG)
EXAMPLES_IMAGE ?= ghcr.io/optuna-operator/worker-examples:$(IMAGE_TAG)
PGBOUNCER_IMAGE ?= ghcr.io/optuna-operator/pgbouncer:$(IMAGE_TAG)
CHART := charts/optuna-operator

.PHONY: images kind-demo chart-lint release

images: ## Build the operator, worker, worker-examples and PgBouncer images (Docker if an engine answers, else buildah)
	@if ! { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }; then \
	  echo "make images: no Docker engine; building with buildah (make images-buildah)" >&2; \
	  $(MAKE) images-buildah; exit 0; fi; \
	docker build -f Dockerfile -t $(OPERATOR_IMAGE) . && \
	docker build -f worker_image/Dockerfile -t $(WORKER_IMAGE) . && \
	docker build -f worker_image/Dockerfile --target examples -t $(EXAMPLES_IMAGE) . && \
	docker build -f pgbouncer_image/Dockerfile -t $(PGBOUNCER_IMAGE) .

kind-demo: ## kind cluster, images, chart with bundled PostgreSQL, the XGBoost study (needs Docker, kind)
	OPERATOR_IMAGE=$(OPERATOR_IMAGE) EXAMPLES_IMAGE=$(EXAMPLES_IMAGE) hack/kind-demo.sh

chart-lint: binaries ## helm lint the chart with default and ci/ values; chart CRD = crds/
	@helm="$$(hack/build-binaries.sh --print)/helm"; \
	"$$helm" lint --strict $(CHART) && \
	for values in $(CHART)/ci/*-values.yaml; do "$$helm" lint --strict $(CHART) -f "$$values"; done
	@diff -u crds/tuning.optuna-operator.io_tuningstudies.yaml $(CHART)/crds/tuning.optuna-operator.io_tuningstudies.yaml \
	  || { echo "$(CHART)/crds differs from crds/: run make crds" >&2; exit 1; }

release: binaries node-packages ## dist/: chart package (lint + helm template on Kubernetes 1.30-1.34), CRD bundle, OCI image archives with SBOMs, SHA256SUMS
	BUILD_CA_BUNDLE=$(BUILD_CA_BUNDLE) hack/release.sh

# --------------------------------------------------------------------------- the node bed
# A real kubelet, containerd + runc, CNI, kube-proxy and kube-router's NetworkPolicy
# controller instead of the pod executor (hack/testbed/nodebed.py); images from the
# project's Dockerfiles built by buildah.
# BUILD_CA_BUNDLE: a CA bundle for pip inside image builds (machines behind a TLS proxy);
# empty to build without one.
BUILD_CA_BUNDLE ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt))

.PHONY: node-packages node-binaries images-buildah node-bed node-bed-down node-demo test-node test-release

node-packages: ## Debian packages of the node bed (containerd, runc, CNI plugins, iptables, ipset, buildah, debootstrap)
	hack/nodebed/install-packages.sh

node-binaries: ## kubelet, kube-proxy (plus the control plane) and kube-router into the versioned caches
	hack/build-binaries.sh --node
	hack/nodebed/build-kube-router.sh

images-buildah: node-packages ## Operator, worker, worker-examples, dashboard and PgBouncer images with buildah, no Docker
	BUILD_CA_BUNDLE=$(BUILD_CA_BUNDLE) OPERATOR_IMAGE=$(OPERATOR_IMAGE) WORKER_IMAGE=$(WORKER_IMAGE) \
	  EXAMPLES_IMAGE=$(EXAMPLES_IMAGE) PGBOUNCER_IMAGE=$(PGBOUNCER_IMAGE) hack/nodebed/build-images.sh

node-bed: venv node-packages node-binaries postgres ## Start the node bed in the background (.dev/node-bed) and write .dev/env
	$(TESTBED) up --node

node-bed-down: venv ## Stop every process node-bed started, its containers and cgroups
	$(TESTBED) down --node

node-demo: venv node-packages node-binaries postgres images-buildah ## Node bed, images, helm install, the XGBoost study to Succeeded in real containers
	PYTHONPATH=hack:. $(BIN)/python -u hack/node_demo.py

test-node: venv node-packages node-binaries postgres images-buildah ## Node-bed tests: chart install, real containers, SIGKILL, restricted, Services, NetworkPolicy
	$(PYTEST) tests/node

test-release: venv node-packages node-binaries postgres release ## make release, then the node bed installs from dist/ alone: SHA256SUMS, its image archives, its chart .tgz, a study to Succeeded
	$(PYTEST) tests/release
