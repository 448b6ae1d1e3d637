# The front door. `make setup` is idempotent: it re-installs only when a requirements file changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pasta-setup
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint dataset

DATASET_CONFIG ?= configs/demo/dataset.yaml
DATASET_ARGS ?=

setup: $(STAMP)

$(STAMP): requirements.txt requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned by the lock, so that no other package can pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

dataset: setup
	$(PY) -m data_gen --config $(DATASET_CONFIG) $(DATASET_ARGS)
