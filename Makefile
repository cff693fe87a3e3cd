# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean bench test-py312

venv: $(STAMP)

# torch is pinned to the CPU build that is on disk here (an unpinned torch pulls GBs of CUDA);
# pretrainedmodels is only the reference SENet for tests, so its deps (torchvision) are skipped.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,convert]"
	$(PY) -m pip install -q --no-deps pretrainedmodels==0.7.4
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) train.py --demo

bench: $(STAMP)
	$(PY) benchmarks/bench_grid.py --cpu

# The suite under Python 3.12 without torch (the torch tests skip: our pinned CPU torch is a
# Python 3.11 build), in one of two version sets:
#   make test-py312                      the GPU machines' set, benchmarks/gpu_versions.txt -> .venv312
#   make test-py312 JAX_VERSION=latest   the newest jax, flax, optax, orbax, numpy on PyPI -> .venv312-latest
#   make test-py312 JAX_VERSION=0.12.0   that jax and jaxlib, the rest resolved by pip -> .venv312-0.12.0
#   make test-py312 TESTS=tests/test_losses.py   a part of the suite only
# PYTHON312 is any Python 3.12 (pyenv's, if there is one). "latest" upgrades on every run, past
# pyproject's upper bounds (pip then warns of the conflict: time to test and raise the bound).
PYTHON312   ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
JAX_VERSION ?= gpu
TESTS       ?= tests
ifeq ($(JAX_VERSION),gpu)
VENV312 := .venv312
PINS312 := -c benchmarks/gpu_versions.txt
else ifeq ($(JAX_VERSION),latest)
VENV312 := .venv312-latest
NEWEST  := --upgrade jax jaxlib flax optax orbax-checkpoint numpy
else
VENV312 := .venv312-$(JAX_VERSION)
PINS312 := "jax==$(JAX_VERSION)" "jaxlib==$(JAX_VERSION)"
endif

test-py312:
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q --upgrade pip
	$(VENV312)/bin/python -m pip install -q -e ".[test]" $(PINS312)
	$(if $(NEWEST),$(VENV312)/bin/python -m pip install -q $(NEWEST))
	$(VENV312)/bin/python -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy) '
	$(VENV312)/bin/python -m pytest -q $(TESTS)

clean:
	rm -rf $(VENV) .venv312* runs .pytest_cache
