# Every developer action. `make serve` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What serving needs (the package and its dependencies), then what the tests and linters add.
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test

.PHONY: serve test test-unit test-integration test-acceptance test-gpu kernels lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# On the CPU the default engine is faster-whisper (no PyTorch). Where an NVIDIA GPU is present
# the default engine is transformers, which needs PyTorch: the `transformers` extra brings it.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install -q -e '.[transformers]'; \
	else \
	  $(BIN)/pip install -q -e .; \
	fi
	touch $@

$(TEST_STAMP): $(SERVE_STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	# The CPU build of PyTorch (the transformers engine's tests run on the CPU).
	$(BIN)/pip install -q 'torch==2.13.0' 'transformers>=4.45'
	touch $@

serve: $(SERVE_STAMP)
	mkdir -p var
	$(BIN)/gpuscribe serve --data-dir var

test: $(TEST_STAMP)
	$(BIN)/python -m pytest tests

test-unit: $(TEST_STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(TEST_STAMP)
	$(BIN)/python -m pytest tests/integration

test-acceptance: $(TEST_STAMP)
	$(BIN)/python -m pytest tests/acceptance

# On a machine with CUDA GPUs, with the Python that has torch and transformers (no .venv: GPU
# images bring their own PyTorch build): only the tests marked `gpu`.
# Each file in a process of its own: test_cuda_node checks that the process which runs the
# scheduler holds no CUDA context, which a file that decodes on CUDA here would have made.
test-gpu:
	for f in tests/gpu/test_*.py; do \
	  PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m pytest -p no:cacheprovider -m gpu $$f || exit 1; \
	done

# The engine's Triton kernels compiled for an H100/H200 (sm_90) on this machine, GPU or not:
# what each compiled into (`tools/kernel_asm.py`). With Triton in .venv, the unit tests that
# run the kernels in Triton's interpreter and check their compiled loads stop skipping.
kernels: $(TEST_STAMP)
	$(BIN)/pip install -q triton
	$(BIN)/python tools/kernel_asm.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy

format: $(TEST_STAMP)
	$(BIN)/ruff format src tests benchmarks tools
	$(BIN)/ruff check --fix src tests benchmarks tools

bench: $(SERVE_STAMP)
	$(BIN)/gpuscribe bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
