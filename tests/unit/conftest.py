"""Fixtures several unit test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


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
