# Set-up is two commands: `make run` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:50051
DATA_DIR ?= ./data

.PHONY: install proto run test test-fast lint bench loadtest soak clean kernel kernel-check wheel
.PHONY: clients ts-install test-ts proto-lint proto-breaking

# The install builds the rating kernel (engine/kernel, Rust) too: prerequisites are Python 3.11 and a stable
# Rust toolchain (rustup). Cargo caches the release build in engine/kernel/target between runs.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@ $(KERNEL_STAMP)

# Rebuilds engine._kernel after a change to the kernel's sources (cargo rebuilds only what changed).
KERNEL_DIR := engine/kernel
KERNEL_SRC := $(wildcard $(KERNEL_DIR)/src/*.rs $(KERNEL_DIR)/proto/*.proto) $(KERNEL_DIR)/build.rs \
	$(KERNEL_DIR)/Cargo.toml $(KERNEL_DIR)/Cargo.lock
KERNEL_STAMP := $(VENV)/.kernel
$(KERNEL_STAMP): $(VENV)/.installed $(KERNEL_SRC)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

kernel: $(KERNEL_STAMP)

install: $(VENV)/.installed $(KERNEL_STAMP)

# The kernel's own checks: formatting, clippy with warnings as errors, and its unit and property tests
# (TARIFF_PROPTEST_CASES raises the property tests' case count; `make soak` does).
kernel-check:
	cd $(KERNEL_DIR) && cargo fmt --check
	cd $(KERNEL_DIR) && cargo clippy --quiet --all-targets -- -D warnings
	cd $(KERNEL_DIR) && cargo test --quiet

# A wheel with the compiled kernel inside, in dist/: it installs without Rust.
wheel: install
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w dist .

# Regenerates clients/python/tariff/v1 from proto/ (committed; a test checks it is fresh).
proto: install
	$(PY) proto/generate.py

# The TypeScript client (clients/typescript): npm ci from its committed package-lock.json.
NPM ?= npm
TS_DIR := clients/typescript
BUF := $(TS_DIR)/node_modules/.bin/buf
HAVE_NODE := $(shell command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && echo yes)

$(TS_DIR)/node_modules/.installed: $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && $(NPM) ci --no-audit --no-fund
	touch $@

ts-install: $(TS_DIR)/node_modules/.installed

# Regenerates every committed client from proto/: Python (make proto) and TypeScript
# (clients/typescript/src/gen, by buf + protoc-gen-es from node_modules). Tests check both are fresh.
clients: proto ts-install
	cd $(TS_DIR) && $(NPM) run --silent generate

# buf lint over proto/ (rules in buf.yaml); skipped, saying so, where node is absent.
proto-lint:
ifeq ($(HAVE_NODE),yes)
	$(MAKE) --no-print-directory ts-install
	$(BUF) lint
else
	@echo "node not found: skipping buf lint of proto/"
endif

# Fails when proto/ breaks compatibility with git ref BREAKING_AGAINST (a field renumbered, a
# field dropped without reserving its number and name, ...): `make proto-breaking BREAKING_AGAINST=main`.
BREAKING_AGAINST ?= HEAD~1
proto-breaking: ts-install
	$(BUF) breaking --against '.git#ref=$(BREAKING_AGAINST),subdir=proto'

# The TypeScript client's tests (node --test, against real server processes).
test-ts:
ifeq ($(HAVE_NODE),yes)
	$(MAKE) --no-print-directory ts-install
	cd $(TS_DIR) && TARIFF_PYTHON=$(abspath $(PY)) $(NPM) test
else
	@echo "node not found: skipping TypeScript client tests"
endif

run: install proto
	$(VENV)/bin/tariff serve --listen $(LISTEN) --data-dir $(DATA_DIR) --demo

# The whole suite: lint, types, engine, journal, and tests against real server processes.
test: install lint kernel-check
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory test-ts

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy engine server clients/python/tariff tests proto/generate.py
	$(MAKE) --no-print-directory proto-lint

# DESIGN §6 figures against reference runs in the same invocation (under 10 minutes; see README, Performance).
bench: install
	$(VENV)/bin/tariff bench --out bench.json

# Locust, headless, for LOADTEST_S seconds against a server it starts on a temp data dir and stops.
LOADTEST_S ?= 30
loadtest: install
	LOADTEST_S=$(LOADTEST_S) $(PY) loadtests/run.py

# The full fault soak (50 x kill -9 under streaming load with retries, checked against a recomputation of the
# journal; ~10-15 min) and the hostile-input fuzz with more examples (`make test` runs short versions of both).
SOAK_SEED ?= 1
FUZZ_EXAMPLES ?= 100
soak: install
	cd $(KERNEL_DIR) && TARIFF_PROPTEST_CASES=2000 cargo test --quiet
	TARIFF_KERNEL_EXAMPLES=2000 $(PY) -m pytest -q -p no:cacheprovider tests/test_kernel_differential.py tests/test_kernel_properties.py
	$(PY) -m tests.soak --crashes 50 --clients 3 --seed $(SOAK_SEED) --out soak.json
	TARIFF_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider -s tests/test_fuzz_server.py

clean:
	rm -rf $(VENV) build *.egg-info dist engine/_kernel*.so
