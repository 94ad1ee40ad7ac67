"""Decoding tasks' audio in a worker: the most urgent task first, and on a GPU off the worker's
interpreter.

PyAV's frame loop takes the interpreter lock in short bursts. Two threads decoding a 20-minute
WAV at once took 4.7 times as long as one alone (0.42 s), and on an H200 300 tasks decoding at
once starved the batcher thread and the model's load (142 s instead of 10). Decoding one task at
a time in the worker then bounded the whole service: 549 audio-seconds per second for
large-v3-turbo over HTTP where the same batch decodes 2,270 in one process, and an urgent
30-second task, claimed at once, waited 107 s behind the queue of decodes.

So on a GPU the worker decodes in child processes (spawned on first use; they never touch the
GPU), `processes` at a time; on the CPU, where the cores are the engine's, in the task's own
thread, one at a time. Either way a waiting task of a better priority takes the next free slot.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from gpuscribe.audio import SAMPLE_RATE
from gpuscribe.domain import InvalidRequest

log = logging.getLogger(__name__)

MAX_DECODE_PROCESSES = 4


def decode_processes(cpu_count: int | None) -> int:
    """Child processes a GPU worker decodes in: a quarter of the cores, 1 to 4."""
    return max(1, min(MAX_DECODE_PROCESSES, (cpu_count or 1) // 4))


class DecodeSlots:
    """A counting semaphore that lets waiters in by priority (lower first), then arrival."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("at least one slot")
        self._free = count
        self._waiting: list[tuple[int, int]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()

    @contextmanager
    def held(self, priority: int) -> Iterator[None]:
        ticket = (priority, next(self._order))
        with self._changed:
            heapq.heappush(self._waiting, ticket)
            while not (self._free > 0 and self._waiting[0] == ticket):
                self._changed.wait()
            heapq.heappop(self._waiting)
            self._free -= 1
            self._changed.notify_all()  # the next waiter may take another free slot
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)


def _decode_here(path: str) -> npt.NDArray[np.float32]:
    from gpuscribe.audio.decode import decode

    return decode(path, sample_rate=SAMPLE_RATE)


def _decode_in_child(path: str) -> tuple[npt.NDArray[np.float32] | None, str, str]:
    """Runs in a child process: the samples, or the client error's message and code (an
    exception with keyword arguments does not come back through pickling whole)."""
    try:
        return _decode_here(path), "", ""
    except InvalidRequest as exc:
        return None, exc.message, exc.code


class AudioDecoder:
    """Decodes task audio files to Whisper's samples (mono float32 at 16 kHz)."""

    def __init__(self, processes: int = 0) -> None:
        """`processes` > 0: decode in that many child processes; 0: in the calling thread, one
        at a time."""
        self._processes = processes
        self._slots = DecodeSlots(max(1, processes))
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    def decode(self, path: str, priority: int) -> npt.NDArray[np.float32]:
        with self._slots.held(priority):
            if self._processes == 0:
                return _decode_here(path)
            return self._decode_in_pool(path)

    def close(self) -> None:
        """Stop the children: decodes waiting end with `CancelledError`, running ones finish
        first. The wait is what ends the children: after `shutdown(wait=False)` a child that
        was idle never got its signal to stop, and the worker's exit waited on it for good
        (on an H200 the node terminated every worker after its 15 s)."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _decode_in_pool(self, path: str) -> npt.NDArray[np.float32]:
        pool = self._executor()
        try:
            samples, message, code = pool.submit(_decode_in_child, path).result()
        except BrokenProcessPool:
            # A child died (a crash in a codec, or killed): the next decode gets a fresh pool.
            with self._pool_lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        if samples is None:
            raise InvalidRequest(message, code=code)
        return samples

    def _executor(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise CancelledError("the worker is stopping")
            if self._pool is None:
                _allow_children()
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    self._processes,
                    mp_context=context,
                    initializer=_end_with_parent,
                    initargs=(os.getpid(),),
                )
                log.info("decoding audio in %d child processes (pid %d)", self._processes,
                         os.getpid())  # fmt: skip
            return self._pool


def _allow_children() -> None:
    """A worker process is started as a daemon (it ends with its node), and multiprocessing
    refuses to start children from a daemon. The flag read here is this process's own copy
    (the node's handle keeps its own): clearing it only lets the decoding children start. They
    end with this process: at its exit the pool is shut down, and if it is killed they notice
    (`_end_with_parent`)."""
    me = multiprocessing.current_process()
    if me.daemon:
        me.daemon = False


PARENT_CHECK_SECONDS = 1.0


def _end_with_parent(parent_pid: int) -> None:
    """In each decoding child: exit once the worker that started it is gone (a worker killed
    with SIGKILL left its children waiting on their task pipe for good)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
