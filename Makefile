# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean bench

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
	$(PY) -m salt_jax.bench --cpu

clean:
	rm -rf $(VENV) runs .pytest_cache
