# Kaizen developer entry points. Every target sets up what it needs (idempotently, from caches when warm).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Test workers: each runs its test files on its own local control plane (make test TEST_WORKERS=1 runs them in turn).
TEST_WORKERS ?= 2
# This checkout's code, whatever checkout the shared cached venv's editable install points at.
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/trainer-image

.PHONY: help setup prerequisites binaries venv venv-trainer-s3 venv-mlflow-server postgres test-tools crds demo test test-unit test-integration fuzz chaos e2e e2e-kind lint clean-cluster bench-retrain

help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

binaries: ## Build the dev stack's upstream binaries: control plane, helm, Prometheus, Traefik, Gateway API CRDs (cached in ~/.cache/kaizen/bin)
	hack/build-binaries.sh

venv: ## Create the Python environment (cached in ~/.cache/kaizen/venvs, linked as .venv)
	hack/setup-python.sh

venv-trainer-s3: ## The trainer's own environment for the s3:// tests (moto): no operator deps (cached, linked as .venv-trainer-s3)
	hack/setup-python.sh trainer-s3

venv-mlflow-server: ## MLflow's tracking server for the experiment-tracking test: its own environment (cached, linked as .venv-mlflow-server)
	hack/setup-python.sh mlflow-server

postgres: ## Install PostgreSQL's server binaries for the collector's tests (as root with apt-get; else says how)
	hack/setup-postgres.sh

test-tools: ## Install headless Chromium and tmux for the report and live-view tests (as root with apt-get; else says how)
	hack/setup-test-tools.sh

# The toolchains make setup cannot provide, checked before anything is built (each script checks again itself).
prerequisites:
	@hack/build-binaries.sh --check
	@hack/setup-python.sh --check

setup: prerequisites binaries venv venv-trainer-s3 venv-mlflow-server postgres test-tools ## Provision everything the demo and the tests need (needs Go >= 1.26.7, Python >= 3.11)

crds: venv ## Regenerate crds/ and the chart's CRDs from the pydantic models
	$(PY) -m kaizen.api.crd

demo: setup ## The whole loop on the local stack: served model, simulated users, drift, retrain, canary, promotion
	$(VENV)/bin/kaizen dev demo

test: setup lint ## Lint, then run the whole test suite (unit, integration, e2e) on the local control plane
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

lint: venv ## Check the Python code: ruff (pycodestyle, pyflakes), the layer contracts in .importlinter, and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

test-unit: venv ## Run the unit tests only (no control plane needed)
	$(VENV)/bin/pytest tests/unit

test-integration: setup ## Run the integration tests only
	$(VENV)/bin/pytest tests/integration

fuzz: setup ## Longer fuzzing: 2,100 generated custom resources on the API server, schemathesis with 100 examples
	KAIZEN_FUZZ_EXAMPLES=700 $(VENV)/bin/pytest tests/integration/test_fuzz_crds.py
	KAIZEN_FUZZ_EXAMPLES=100 $(VENV)/bin/pytest tests/collector/test_openapi_fuzz.py

chaos: setup ## The chaos suite alone (make test runs it too): the operator SIGKILLed at 33 points of one loop, outages, a leader killed
	$(VENV)/bin/pytest tests/chaos

e2e: setup ## Run the end-to-end tests (against KAIZEN_TEST_KUBECONFIG when set)
	$(VENV)/bin/pytest tests/e2e

e2e-kind: venv binaries ## Run the end-to-end tests on a kind cluster (needs Docker and kind)
	kind create cluster --name kaizen-e2e --kubeconfig .kaizen/kind.kubeconfig --wait 120s
	KAIZEN_TEST_KUBECONFIG=$(CURDIR)/.kaizen/kind.kubeconfig $(VENV)/bin/pytest tests/e2e; \
	  status=$$?; kind delete cluster --name kaizen-e2e; exit $$status

bench-retrain: venv ## Benchmark targeted vs full retraining and trainer throughput; writes bench/results/retrain.json
	$(PY) bench/retrain/run.py

clean-cluster: ## Stop a cluster left by `kaizen dev cluster up`
	$(VENV)/bin/kaizen dev cluster down

.PHONY: bench-collector
bench-collector: venv ## Benchmark collector ingest on SQLite and PostgreSQL; writes bench/results/collector.json
	$(PY) bench/collector/run.py

.PHONY: bench-canary
bench-canary: venv ## Benchmark canary analysis (Kaizen vs Flagger, Argo Rollouts, Wald); writes bench/results/canary.json
	$(PY) bench/canary/run.py

.PHONY: bench-loop
bench-loop: venv ## Benchmark the loop: static vs scheduled retrain vs Kaizen vs oracle; writes bench/results/loop.json
	$(PY) bench/loop/run.py

.PHONY: bench-scale
SCALE_N ?= 10,100,1000
bench-scale: venv binaries ## Benchmark one operator with N loops + N rollouts (SCALE_N=10,100,1000); writes bench/results/scale.json
	$(PY) bench/scale/run.py --n $(SCALE_N)
