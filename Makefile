# Set-up is two commands: `make run` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:50051
DATA_DIR ?= ./data

.PHONY: install proto run test test-fast lint bench soak clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Regenerates clients/python/tariff/v1 from proto/ (committed; a test checks it is fresh).
proto: install
	$(PY) proto/generate.py

run: install proto
	$(VENV)/bin/tariff serve --listen $(LISTEN) --data-dir $(DATA_DIR) --demo

# The whole suite: lint, types, engine, journal, and tests against real server processes.
test: install lint
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy engine server clients/python/tariff tests proto/generate.py

clean:
	rm -rf $(VENV) build *.egg-info
