# Everything runs from a virtualenv at .venv, created on first use. Nothing else to install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-chaos test-deploy test-docker lint bench clean dashboards dashboards-check lock

$(STAMP): pyproject.toml setup.py featurizer/_kernels.pyx  # the Cython kernels build at install
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## run: the whole pipeline with the embedded default config (Ctrl-C stops cleanly)
run: $(STAMP)
	$(BIN)/data-feed run

## test: the test suite against real redis-server, simulator, parquet and SQL servers (all but the chaos and deploy runs)
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 -m "not chaos and not deploy"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

## test-deploy: Dockerfiles, compose files, Helm chart and Terraform checked with the real tools (.ci/deploy-tools)
test-deploy: $(STAMP)
	$(BIN)/python -m pytest -q -m "deploy and not docker" tests/deploy; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

## test-chaos: over three minutes of every role SIGKILLed again and again, then the lake checked (CI runs it)
test-chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m chaos; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

## test-docker: both images built and run, the compose stacks validated and the dev stack brought up and down
## (docker from .ci/docker: eval "$$(.ci/docker)" first, or let the tests run it; .ci/docker stop ends dockerd)
test-docker: $(STAMP)
	$(BIN)/python -m pytest -q -m docker tests/deploy; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check data_feed featurizer tests bench
	$(BIN)/mypy data_feed featurizer
	$(BIN)/lint-imports

## dashboards: regenerate observability/ (Grafana dashboards, Prometheus rules) from data_feed/observability
dashboards: $(STAMP)
	$(BIN)/python -m data_feed.observability --out observability

dashboards-check: $(STAMP)
	$(BIN)/python -m data_feed.observability --out observability --check

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/aggregate.py

clean:
	rm -rf $(VENV) .data-feed lake build *.egg-info

## lock: regenerate the pinned dependencies of the images: requirements-dev.lock (Dockerfile-dev) is the dev venv's,
## requirements.lock (Dockerfile) the runtime subset at the same versions (a throwaway venv installs the package alone)
lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable > requirements-dev.lock
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -c requirements-dev.lock .
	.lock-venv/bin/pip freeze --exclude data-feed > requirements.lock
	rm -rf .lock-venv
