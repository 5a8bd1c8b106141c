# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/config.yaml

.PHONY: run test lint typecheck bench loadtest capacity streams install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/llm-proxy serve --config $(CONFIG) --port 8000

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench loadtests
	$(BIN)/ruff format --check proxy tests bench loadtests
	$(BIN)/lint-imports
	$(BIN)/actionlint -shellcheck $(BIN)/shellcheck .github/workflows/*.yml
	$(BIN)/shellcheck deploy/scripts/*.sh

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Fake provider + Redis/Postgres-backed proxy + locust for DURATION seconds; report in
# loadtests/results/<timestamp>/ (bench/README.md, "Load tests"). More options: LOADTEST_ARGS.
DURATION ?= 60
USERS ?= 100
loadtest: $(STAMP)
	$(BIN)/python -m loadtests.run --duration $(DURATION) --users $(USERS) $(LOADTEST_ARGS)

# One replica on one core under a stepped load; writes bench/capacity.json, checks deploy/.
capacity: $(STAMP)
	$(BIN)/python bench/capacity.py $(CAPACITY_ARGS)

# 1,000 slow streams open at once through one worker.
streams: $(STAMP)
	$(BIN)/python bench/streams.py $(STREAMS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: image k8s-validate

# Container image without a Docker daemon (buildah + podman), then run and checked; see deploy/README.md.
image:
	scripts/image.sh

# Render every kustomize overlay, validate it against the Kubernetes schemas, check the policy.
k8s-validate: $(STAMP)
	$(BIN)/pytest tests/deploy
