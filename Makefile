# Accord. Every target works from a fresh clone: it creates .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTO_OUT := node/rpc/_pb

.PHONY: venv proto lint test test-long demo bench bench-feed fuzz soak clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no python3.11 or python3 on PATH; install Python 3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

proto: $(STAMP)
	$(BIN)/python -m tools.protogen

# ruff (every ignore in pyproject.toml says why), mypy --strict on the code and the tests,
# and the import contracts of pyproject.toml [tool.importlinter] (docs/DESIGN.md §2).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy exchange keys node tools tests bench
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-long: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m tools.demo

# The pipelines against the floor, then the feed against medallion in the same run
# (medallion's memory backend copies the collection per page: that part takes minutes).
bench: $(STAMP)
	@if [ -f bench/run.py ]; then $(BIN)/python bench/run.py $(BENCH_ARGS); \
	else echo "bench: bench/run.py is missing from this checkout; nothing to measure"; fi
	$(MAKE) --no-print-directory bench-feed

# The TAXII feed against medallion (memory backend), 10,000 objects through taxii2-client.
FEED_OBJECTS ?= 10000
bench-feed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/feed.py --objects $(FEED_OBJECTS)

FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,fuzz]'
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python -m soak.run --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
