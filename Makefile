# Two commands set everything up on a fresh machine with Python 3.11 or 3.12:
#   make run    installs into .venv and starts crmflow with an embedded Redis and demo traffic
#   make test   installs into .venv and runs the whole suite

# Bytewax 0.21 ships wheels for CPython 3.11 and 3.12 only: pick the first that fits.
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' 2>/dev/null && echo $$p && break; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint bench bench-quick bench-peers wrk compose-tool browser-tool clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "crmflow needs Python 3.11 or 3.12 (Bytewax 0.21 has no wheels for others)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Compiling the core (features/) with mypyc takes about a minute, once per change to it; a
# machine without a C compiler runs the same core as Python (crmflow/compile_core.py).
install: $(STAMP)
	@$(BIN)/python -m crmflow.compile_core

run: install
	$(BIN)/crmflow up --demo

# The whole suite runs on the core as installed (compiled where the machine can); the core's
# own tests run again on its Python sources, which a machine without a compiler runs.
test: install compose-tool browser-tool
	$(BIN)/python -m pytest
	CRMFLOW_PURE_PYTHON=1 $(BIN)/python -m pytest -m core -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Benchmarks report, they never fail (see bench/README.md). HTTP loads use Debian's wrk.
bench: install wrk
	$(BIN)/python -m bench.run

bench-quick: install wrk
	$(BIN)/python -m bench.run --quick

# Feast's feature server, from its own environment (it pins its own pandas, pyarrow and redis).
FEAST_VENV ?= .venv-feast
$(FEAST_VENV)/bin/feast:
	$(PYTHON) -m venv $(FEAST_VENV)
	$(FEAST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FEAST_VENV)/bin/python -m pip install --quiet 'feast[redis]'

bench-peers: install wrk $(FEAST_VENV)/bin/feast
	$(BIN)/python -m bench.peers --feast-venv $(FEAST_VENV)

wrk:
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq wrk >/dev/null; } \
		|| echo "wrk is not installed (apt-get install wrk): the HTTP loads will be skipped"

# `docker-compose config` validates docker-compose.yml without a Docker engine (a test runs it).
# A `docker` without its compose plugin does not count: `docker compose` fails there.
compose-tool:
	@docker-compose version >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null 2>&1 && apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; } \
		|| echo "docker-compose is not installed: the compose file's validation will be skipped"

# The console's browser tests drive Debian's Chromium (Playwright uses it; it downloads none).
browser-tool:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium is not installed (apt-get install chromium): the browser tests will be skipped"

clean:
	rm -rf $(VENV) $(FEAST_VENV) var build .pytest_cache .mypy_cache .ruff_cache *.egg-info test-artifacts
