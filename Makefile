# The two commands: `make demo` and `make test`. Both set themselves up on a fresh clone.
#
# .venv holds the locked dependencies (requirements/lock.txt, made by `make lock`), the package in
# editable mode, and the tools that drive the matrix (uv, nox). `make test-all` runs the suite on
# every supported Python (nox sessions, each in its own venv; PYTHONS=... to choose interpreters).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
NOX    := $(VENV)/bin/nox
BOOT   := $(VENV)/.bootstrapped
STAMP  := $(VENV)/.installed
LOCK   := requirements/lock.txt
# Parallel test workers (pytest-xdist); `make test WORKERS=0` runs in one process.
WORKERS ?= 2
XDIST  := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS))

.PHONY: test test-all test-latest test-lowest coverage check demo bench fmt lint typecheck lock \
	sysdeps clean

# uv itself comes from pip, at the version the lock pins; everything else from the lock, by uv.
$(BOOT):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c $(LOCK) uv
	touch $@

$(STAMP): $(BOOT) pyproject.toml $(LOCK)
	$(UV) pip install -q --python $(PY) -r $(LOCK)
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

sysdeps:
	bash scripts/install-sysdeps.sh

## make test: the whole suite on the default Python, under coverage (line and branch, every
## process), with the floor of pyproject.toml [tool.coverage.report]
test: export COVERAGE_FILE := $(CURDIR)/.coverage-data/make-test/.coverage
test: $(STAMP) sysdeps
	rm -rf .coverage-data/make-test && mkdir -p .coverage-data/make-test
	$(PY) -m coverage run -m pytest -p no:cacheprovider $(XDIST)
	$(PY) -m coverage combine -q
	$(PY) -m coverage report --format=total | sed 's/^/coverage (line+branch, %): /'
	$(PY) -m coverage report --skip-covered --skip-empty

## make test-all: the suite on every supported Python (3.11, 3.12, 3.13), then once with the public
## asyncio path forced and once on the newest as CPython 3.14 leaves asyncio's task table
test-all: $(STAMP) sysdeps
	$(NOX) --no-reuse-existing-virtualenvs -s tests public py314sim -- $(XDIST)
	$(NOX) -s coverage

## make test-latest: the newest release of every dependency, unlocked
test-latest: $(STAMP) sysdeps
	$(NOX) -s latest -- $(XDIST)

## make test-lowest: the lowest versions pyproject.toml declares
test-lowest: $(STAMP) sysdeps
	$(NOX) -s lowest -- $(XDIST)

## make lock: re-resolve requirements/lock.txt (newest releases that pyproject.toml allows)
lock: $(BOOT)
	$(UV) pip compile pyproject.toml requirements/tools.in --all-extras --universal \
		--python-version 3.11 -o $(LOCK)

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
bench: $(STAMP) sysdeps
	mkdir -p bench/results
	$(PY) -m bench --out bench/results/latest.md

clean:
	rm -rf $(VENV) .nox .coverage-data .mypy_cache .ruff_cache .pytest_cache .hypothesis
