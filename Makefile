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

# The oldest torch-geometric that pyproject.toml admits; `make test-oldest` runs the suite against it.
PYG_OLDEST := torch-geometric==2.5.3
OLDEST := .venv-pyg-oldest

.PHONY: test test-oldest demo docs bench bench-deps lint wheel-smoke clean install

test: $(STAMP)
	$(PY) -m pytest -q

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIN)
	$(PY) -c "import torch_scatter" 2>/dev/null || $(PIP) install -q --no-build-isolation torch-scatter
	$(PIP) install -q -e ".[test,plot,scatter,docs,dev]"
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

# Lint, format and types, as CI runs them (.ci/run) and the pre-commit hooks do.
lint: $(STAMP)
	$(PY) -m ruff check stepgraph tests benchmarks
	$(PY) -m ruff format --check stepgraph tests benchmarks
	$(PY) -m mypy stepgraph/train stepgraph/data

# The suite against the oldest torch-geometric declared, in a venv of its own (torch pinned as above).
$(OLDEST)/.installed: pyproject.toml setup.cfg
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q $(TORCH_PIN)
	$(OLDEST)/bin/python -c "import torch_scatter" 2>/dev/null || $(OLDEST)/bin/python -m pip install -q --no-build-isolation torch-scatter
	echo "$(TORCH_PIN)" > $(OLDEST)/torch-pin.txt
	$(OLDEST)/bin/python -m pip install -q -c $(OLDEST)/torch-pin.txt -e ".[test,plot,scatter,docs]" "$(PYG_OLDEST)"
	touch $@

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider

# Build the wheel and the sdist, install the wheel in a fresh venv and run what a user runs first.
wheel-smoke: $(STAMP)
	rm -rf dist build/wheel-smoke build/wheel-demo build/wheel-bench
	$(PY) -m build -q --outdir dist . >/dev/null
	$(PYTHON) -m venv build/wheel-smoke
	build/wheel-smoke/bin/python -m pip install -q $(TORCH_PIN)
	echo "$(TORCH_PIN)" > build/wheel-smoke/torch-pin.txt
	build/wheel-smoke/bin/python -m pip install -q -c build/wheel-smoke/torch-pin.txt dist/*.whl
	cd build && wheel-smoke/bin/stepgraph info && wheel-smoke/bin/stepgraph demo --quiet --out wheel-demo
	cd build && wheel-smoke/bin/stepgraph bench --size small --out wheel-bench

clean:
	rm -rf $(VENV) $(OLDEST) build dist *.egg-info .pytest_cache
