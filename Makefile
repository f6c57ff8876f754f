# Two commands a new user needs: `make demo` and `make test`.
# Both create .venv if it is missing, install PyTorch only when it does not import
# (the pinned CPU wheel; see README for other machines), then the package itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/dynamicnets demo

# One pytest worker per core, one thread each: most tests are small kernels that a second
# thread barely speeds up, so two workers halve the wall time (files stay on one worker,
# keeping their module fixtures). PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 2

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

test-all: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "slow or not slow"

# The API reference, built from the docstrings with pdoc (a fast test builds part of it).
docs: setup
	$(PY) docs/build_api.py build/docs

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
