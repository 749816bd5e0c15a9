# Every target sets up its own virtual environment (.venv) first: on a fresh machine with
# Python 3.10+, `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
RECIPE ?= recipes/shakespeare.yaml
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench gpu lint clean venv llama-cpp

# --no-compile: byte-compiling every installed module (torch's thousands) took 36 of the demo extra's
# 79 s of install (2026-12-02); Python compiles the modules a run imports on first use instead
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

# the demo and the README's next commands need only the `demo` extra: a fresh clone's `make demo`
# skips the test stack (Ray, TRL, lm-eval, transformers, ...), which `make test` adds on top
$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/lmforge run $(RECIPE)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# CPU benchmarks (each prints lmforge vs its peer); the GPU ones run through benchmarks/gpu.sh.
BENCHES := $(filter-out benchmarks/gpu_%.py benchmarks/fsdp_memory.py,$(wildcard benchmarks/*.py))

bench: $(STAMP)
	for b in $(BENCHES); do echo "== $$b"; $(PY) $$b || exit 1; done

# llama.cpp's CPU tools, built from the llama-cpp-python sdist into ~/.cache/lmforge (minutes; once):
# tests/test_llama_cpp.py (make test-slow) and benchmarks/llama_cpp.py use them.
llama-cpp: $(STAMP)
	PYTHON=$(PY) bash scripts/build_llama_cpp.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
