"""Fixtures several unit test modules share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Triton's kernels (where Triton is installed; CI has none) run on CPU tensors in its
# interpreter, which must be chosen before Triton is first imported: its library's reductions
# (`tl.max`, `tl.sum`) are kernels of their own that the interpreter patches at import.
os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def whisper() -> Iterator[Any]:
    """The tiny random Whisper (`TEST_ARCHITECTURE`) in float32 on the CPU, one thread: the
    batched engine's unit tests read its weights and never change them."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from gpuscribe.workers.engines.transformers_engine import (
        TEST_ARCHITECTURE,
        _build_random,
        _Target,
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = _build_random(TEST_ARCHITECTURE, _Target(torch.device("cpu"), torch.float32))
    model.eval()
    yield model
    torch.set_num_threads(threads)
