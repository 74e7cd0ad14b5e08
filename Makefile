# Set-up is automatic: every target below bootstraps .venv when it is missing
# or when setup.cfg / pyproject.toml changed, and skips straight to the work
# when it is already installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.stepgraph-installed
# The CPU wheel of torch 2.13.0 is on local disk here; an unpinned torch pulls a
# multi-GB CUDA build. torch-scatter only ships as source and must be compiled
# against the installed torch, hence --no-build-isolation (pip caches the wheel).
TORCH_PIN := torch==2.13.0

.PHONY: test demo docs bench bench-deps lint clean install

test: $(STAMP)
	$(PY) -m pytest -q

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIN)
	$(PY) -c "import torch_scatter" 2>/dev/null || $(PIP) install -q --no-build-isolation torch-scatter
	$(PIP) install -q -e ".[test,plot,scatter,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stepgraph demo

# The site: the guides of docs/ and the API reference built from the docstrings;
# a warning (a broken docstring, a dead link between pages) fails the build.
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

# Optional comparison baselines: torch-sparse (compiled against our torch, so
# without build isolation) and squidpy (pulls many packages; a separate venv is
# fine too: the benchmarks only need `stepgraph` importable).
bench-deps: $(STAMP)
	$(PY) -c "import torch_sparse" 2>/dev/null || $(PIP) install -q --no-build-isolation torch-sparse
	echo "$(TORCH_PIN)" > $(VENV)/torch-pin.txt
	$(PIP) install -q -c $(VENV)/torch-pin.txt -e ".[bench]"

# The figures quoted in the issues' notes; each script's --help documents sizes.
bench: $(STAMP)
	$(PY) benchmarks/trainer_overhead.py
	$(PY) benchmarks/graph_build.py
	$(PY) benchmarks/node_sampling.py
	$(PY) benchmarks/ddp_scaling.py
	$(PY) benchmarks/end_to_end.py

lint: $(STAMP)
	$(PY) -m pip install -q ruff && $(PY) -m ruff check stepgraph tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
