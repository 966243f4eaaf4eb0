# `make test` and `make demo` work on a fresh machine: the first call builds .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before the package. Which build comes (CPU or CUDA) depends on the index pip is configured with
# (PyPI's Linux wheel is the CUDA one); set TORCH_SPEC to pin another, e.g. a +cpu local version.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install lint test test-fast demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $@

lint: install
	$(VENV)/bin/ruff check sicog tests benchmarks

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/sicog cycle --out runs/demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
