# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv when missing and install torch 2.13.0 (a CPU build on this machine) first,
# then this package with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bench paper docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,examples]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/digits_classifier.py $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mali_func export tests examples benchmarks

# Two workers (CI's and this machine's two cores), one thread each.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile

test: lint
	$(PYTEST)

# The daily tier: no torch.compile, no examples, exports or property tests (under 3 minutes).
test-fast: lint
	$(PYTEST) -m "not slow and not compile"

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# The paper's claims measured here (issue #30; about 35 minutes, one thread each): tables and
# plots in PAPER_OUT. A smoke run: make paper PAPER_ARGS=--quick PAPER_OUT=/tmp/paper
PAPER := OMP_NUM_THREADS=1 $(BIN)/python
PAPER_OUT ?= benchmarks/results/paper

paper: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(PAPER) examples/time_series.py --out $(PAPER_OUT) $(PAPER_ARGS)
	$(PAPER) examples/continuous_flow.py --out $(PAPER_OUT) $(PAPER_ARGS)
	$(PAPER) benchmarks/paper_reverse.py --out $(PAPER_OUT) $(PAPER_ARGS)
	$(PAPER) benchmarks/paper_memory.py --out $(PAPER_OUT) $(PAPER_ARGS)

# The documentation site (docs/, mkdocs.yml): the guide and the API reference generated from the
# docstrings; --strict turns a broken link or a docstring naming a missing argument into an error.
DOCS_STAMP := $(VENV)/.docs-stamp

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
