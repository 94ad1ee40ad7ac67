"""workers/audio_decoding.py: decode slots let the most urgent waiter in first; decoding in a
child process gives the same samples as in the thread, and a file that is not audio still comes
back as the client's error (with its code) rather than a broken pool; a daemon worker (as the
node starts them) can start its decoding child, which ends when the worker is killed; a worker
that closes its decoder exits at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.support.audio import encode, tone_samples

from gpuscribe.domain import InvalidRequest
from gpuscribe.workers.audio_decoding import AudioDecoder, DecodeSlots, decode_processes


def test_decode_processes_are_a_quarter_of_the_cores_within_one_to_four() -> None:
    assert [decode_processes(n) for n in (None, 1, 2, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]


def test_a_free_slot_goes_to_the_best_priority_waiting() -> None:
    slots = DecodeSlots(1)
    order: list[int] = []
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with slots.held(5):
            held.set()
            release.wait(10)

    def waiter(priority: int) -> None:
        with slots.held(priority):
            order.append(priority)

    first = threading.Thread(target=holder)
    first.start()
    assert held.wait(10)
    waiters = []
    for priority in (3, 0, 2):  # arrive in this order while the slot is held
        thread = threading.Thread(target=waiter, args=(priority,))
        thread.start()
        waiters.append(thread)
        deadline = time.monotonic() + 10
        while slots.waiting < len(waiters) and time.monotonic() < deadline:
            time.sleep(0.01)
    release.set()
    for thread in [first, *waiters]:
        thread.join(10)
    assert order == [0, 2, 3]


def test_two_slots_run_two_at_once() -> None:
    slots = DecodeSlots(2)
    inside = threading.Barrier(2, timeout=10)

    def both() -> None:
        with slots.held(1):
            inside.wait()  # breaks (raises) unless both threads are inside together

    threads = [threading.Thread(target=both) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not inside.broken


@pytest.fixture(scope="module")
def flac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("decode") / "tone.flac"
    return encode(path, tone_samples(2.5), "flac")


def test_a_child_process_decodes_what_the_thread_decodes(flac: Path, tmp_path: Path) -> None:
    in_thread = AudioDecoder(0)
    in_child = AudioDecoder(1)
    try:
        here = in_thread.decode(str(flac), priority=2)
        there = in_child.decode(str(flac), priority=2)
        assert here.dtype == np.float32 and here.size == 40_000
        np.testing.assert_array_equal(here, there)
        junk = tmp_path / "junk.wav"
        junk.write_bytes(b"RIFF....WAVEfmt this is not audio")
        with pytest.raises(InvalidRequest) as caught:
            in_child.decode(str(junk), priority=2)
        assert caught.value.code == "corrupt_audio"
        np.testing.assert_array_equal(in_child.decode(str(flac), priority=0), here)  # still up
    finally:
        in_child.close()
    with pytest.raises(CancelledError):  # closed with its worker: no new children
        in_child.decode(str(flac), priority=0)


def _decode_as_a_worker(path: str, answers: Any) -> None:
    """A daemon process, as a node's worker is: decodes in a child, reports its pid, waits."""
    decoder = AudioDecoder(1)
    samples = decoder.decode(path, priority=2)
    pool = decoder._pool
    assert pool is not None
    answers.put((samples.size, [p.pid for p in pool._processes.values()]))
    time.sleep(120)


def test_a_daemon_worker_decodes_in_a_child_that_ends_when_it_is_killed(flac: Path) -> None:
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    worker = context.Process(target=_decode_as_a_worker, args=(str(flac), answers), daemon=True)
    worker.start()
    try:
        size, children = answers.get(timeout=120)
        assert size == 40_000 and len(children) == 1
    finally:
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        worker.join(10)
    deadline = time.monotonic() + 15
    while _running(children[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(children[0]), "the decoding child outlived its killed worker"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _decode_close_and_return(path: str) -> None:
    """A daemon process, as a node's worker is: decodes in two children, closes, returns."""
    decoder = AudioDecoder(2)
    decoder.decode(path, priority=2)
    decoder.close()


def test_a_worker_that_closes_its_decoder_exits_at_once(flac: Path) -> None:
    """After a decode, `close` must leave no child that the worker's exit waits on: an idle
    child that never got its signal to stop held every worker's exit on an H200 until the
    node terminated it."""
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=_decode_close_and_return, args=(str(flac),), daemon=True)
    worker.start()
    worker.join(30)
    try:
        assert worker.exitcode == 0, "the worker did not exit after closing its decoder"
    finally:
        if worker.is_alive():
            worker.kill()
