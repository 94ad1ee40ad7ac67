"""A task's gpuscribe priority reaches the continuous batch the right way round: gpuscribe runs
lower values sooner (Priority.URGENT = 0), the batcher admits higher numbers first, and
`batch_priority` maps the one onto the other, so that an urgent task's windows take the next
free rows. On the CPU, with the tiny random test architecture."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from gpuscribe.domain import Priority
from gpuscribe.workers.engines.batched.batcher import Batcher, EncoderInput, Pending
from gpuscribe.workers.engines.batched.decoder import StaticDecoder
from gpuscribe.workers.engines.batched.model import batch_priority, vocabulary_from_tokenizer
from gpuscribe.workers.engines.batched.search import DecodeOptions
from gpuscribe.workers.engines.transformers_engine import (
    TEST_ARCHITECTURE,
    _build_random,
    _random_info,
    _Target,
)

WAIT = 60.0


def test_urgent_maps_to_the_batchers_highest_priority() -> None:
    mapped = {p: batch_priority(p) for p in Priority}
    assert mapped == {Priority.URGENT: 3, Priority.HIGH: 2, Priority.NORMAL: 1, Priority.LOW: 0}
    # the batcher admits higher numbers first: that order is gpuscribe's
    assert sorted(Priority, key=batch_priority, reverse=True) == sorted(Priority)


@pytest.fixture
def batcher() -> Iterator[Batcher]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    whisper = _build_random(TEST_ARCHITECTURE, _Target(torch.device("cpu"), torch.float32))
    whisper.eval()
    info = _random_info(TEST_ARCHITECTURE)
    vocabulary = vocabulary_from_tokenizer(info.tokenizer_file, TEST_ARCHITECTURE.vocab_size, info)
    made = Batcher(
        StaticDecoder(whisper, 1, use_graphs=False), vocabulary, TEST_ARCHITECTURE.n_mels
    )
    yield made
    made.close()
    torch.set_num_threads(threads)


def window(seed: int) -> EncoderInput:
    rng = np.random.default_rng(seed)
    frames = 2 * TEST_ARCHITECTURE.max_source_positions
    features = rng.normal(size=(1, TEST_ARCHITECTURE.n_mels, frames)).astype(np.float32)
    return EncoderInput(features=features)


def test_the_windows_of_urgent_tasks_take_the_free_row_first(batcher: Batcher) -> None:
    """One row, busy with a long window; windows of every priority queue behind it (lowest
    first); as the row frees, they are admitted in gpuscribe's priority order."""
    v = batcher.vocabulary
    prompt = [v.sot, v.no_timestamps]

    def forced(length: int) -> DecodeOptions:
        return DecodeOptions(beam_size=1, forced_length=length, max_length=448)

    finished: list[str] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def watch(name: str, pending: Pending) -> None:
        def wait() -> None:
            try:
                pending.result()
            finally:
                with lock:
                    finished.append(name)

        thread = threading.Thread(target=wait)
        thread.start()
        threads.append(thread)

    watch("busy", batcher.submit(window(1), [prompt], forced(40)))
    deadline = time.monotonic() + WAIT
    while not batcher._rows:
        assert time.monotonic() < deadline, "the first window never started"
        time.sleep(0.005)
    entered, gate = threading.Event(), threading.Event()

    def hold() -> None:  # the batcher thread waits here while the others queue
        entered.set()
        gate.wait(WAIT)

    holder = threading.Thread(target=lambda: batcher.call(hold))
    holder.start()
    try:
        assert entered.wait(WAIT)
        for seed, priority in enumerate(sorted(Priority, reverse=True), start=2):  # LOW first
            pending = batcher.submit(
                window(seed), [prompt], forced(3), priority=batch_priority(priority)
            )
            watch(priority.label, pending)
    finally:
        gate.set()
    holder.join(WAIT)
    for thread in threads:
        thread.join(WAIT)
    assert finished == ["busy", "urgent", "high", "normal", "low"]
