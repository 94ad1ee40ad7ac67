# Every developer action. `make serve` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-unit test-integration test-acceptance test-gpu lint format bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# The CPU build of PyTorch (the transformers engine's tests run on the CPU).
	$(BIN)/pip install -q 'torch==2.13.0' 'transformers>=4.45'
	touch $(STAMP)

serve: $(STAMP)
	mkdir -p var
	$(BIN)/gpuscribe serve --data-dir var

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

test-acceptance: $(STAMP)
	$(BIN)/python -m pytest tests/acceptance

# On a machine with CUDA GPUs, with the Python that has torch and transformers (no .venv: GPU
# images bring their own PyTorch build): only the tests marked `gpu`.
test-gpu:
	PYTHONPATH=src $(PYTHON) -m pytest -p no:cacheprovider -m gpu tests/gpu

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/gpuscribe bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
