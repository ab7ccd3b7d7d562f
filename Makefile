# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv when missing and install torch 2.13.0 (a CPU build on this machine) first,
# then this package with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
