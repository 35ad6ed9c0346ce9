# Set-up and everyday commands. Every target installs what it needs first, so a fresh
# machine needs only python3 (with pip) and make:
#   make serve   set up everything, run the service on the embedded model (port 9000)
#   make test    set up everything, run lint, type checks and the test suite

SHELL := /bin/bash
UV ?= python3 -m uv
ENV_FILE ?= configs/default.env
# llama-cpp-python compiles llama.cpp from source (about 5 minutes on 2 cores); uv caches
# the built wheel, so only the first set-up on a machine pays for it.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export UV_PYTHON ?= 3.11
# Byte-compile at install: imports then read .pyc even where PYTHONDONTWRITEBYTECODE is set
# (as on this machine), which takes service start-up from ~5 s to ~1 s.
export UV_COMPILE_BYTECODE ?= 1

.PHONY: setup uv system-deps serve test lint typecheck unit bench docker clean

uv:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet 'uv>=0.9'

system-deps:
	@command -v cmake >/dev/null && command -v c++ >/dev/null || { \
	  echo "installing cmake and a C++ compiler (needed to build llama-cpp-python)"; \
	  apt-get update -qq && apt-get install -y -qq cmake build-essential; }
	@# The playground test drives a real headless Chromium through Selenium.
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (for the browser tests)"; \
	  apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

.venv/.synced: pyproject.toml uv.lock | uv system-deps
	$(UV) sync --locked --extra embedded
	@touch $@

setup: .venv/.synced

serve: setup
	$(UV) run --no-sync llm-service serve --env-file $(ENV_FILE)

# Style, then architecture: imports point down the package's layers (import-linter contracts in
# pyproject.toml) and the declared dependencies match what llm_service imports (deptry).
lint: setup
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .
	$(UV) run --no-sync lint-imports
	$(UV) run --no-sync deptry .

typecheck: setup
	$(UV) run --no-sync mypy

unit: setup
	$(UV) run --no-sync pytest -q

test: lint typecheck unit

# Relay speed against a fast fake upstream: service on core 0, upstream + load on core 1.
# BENCH_ARGS="--quick" for a short smoke run.
# Then what a routing decision costs at 10,000 distinct prefixes (docs/routing.md).
bench: setup
	$(UV) run --no-sync python -m bench.run $(BENCH_ARGS)
	$(UV) run --no-sync python -m bench.routing_cost

# The fleet simulator: fake vLLM replicas with prefix caches, one RAG trace replayed through
# this service under each LLM_ROUTING and through vllm-router (docs/fleet-simulator.md).
# FLEET_ARGS="--kill-at 0.5" kills a replica halfway; "--rounds 2" repeats, rotating.
.PHONY: fleet
fleet: setup
	$(UV) run --no-sync python -m bench.fleet $(FLEET_ARGS)

docker:
	docker build -t llm-service:latest .

clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache .import_linter_cache

# --- reliability -------------------------------------------------------------------------
# 2000 concurrent paced streams against the fake upstream: errors, stalls, memory (not part
# of `make test`). LOADTEST_ARGS="--streams 500 --interval-ms 200" for another shape.
# Then hostile clients and a hostile model server in bulk (docs/security.md): memory, time,
# health checks, no echoed key. HOSTILE_ARGS="--only flood,echo" for some cases; both run
# even when the first fails, and the target fails if either did.
.PHONY: loadtest
loadtest: setup
	status=0; \
	$(UV) run --no-sync python -m bench.loadtest $(LOADTEST_ARGS) || status=1; \
	$(UV) run --no-sync python -m bench.hostile_load $(HOSTILE_ARGS) || status=1; \
	exit $$status
