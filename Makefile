# The two commands: `make demo` and `make test`. Both set themselves up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --config-settings editable_mode=compat
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test check demo bench fmt lint typecheck sysdeps clean

# The test environment includes the demo's extra: the suite runs the demo and checks its picture.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[dev,trio,uvloop,redis,demo]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PIP) -e '.[dev,trio,uvloop,redis,demo,bench]'
	touch $@

sysdeps:
	bash scripts/install-sysdeps.sh

## make test: the whole suite (installs the venv and the system packages it needs first)
test: $(STAMP) sysdeps
	$(PY) -m pytest

## make check: format check + ruff + mypy --strict + tests
check: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(MAKE) test

fmt: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

lint: $(STAMP)
	$(PY) -m ruff check .

typecheck: $(STAMP)
	$(PY) -m mypy

## make demo: the main job
demo: $(STAMP)
	$(PY) -m dwcp_resilience demo

## make bench: every bench case, ours next to the peers, asyncio and uvloop (the Redis case starts
## its own redis-server on a free loopback port)
bench: $(BENCH_STAMP) sysdeps
	mkdir -p bench/results
	$(PY) -m bench --out bench/results/latest.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
