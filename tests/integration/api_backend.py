"""A small but real `Backend` for API tests, a thread that completes its tasks, and a uvicorn
server in a thread.

`ApiTestBackend` stores submissions in a real store (InMemoryStore unless given), enforces the
queue limit with `QueueFull`, cancels through the store, and shows two simulated GPUs.
`Completer` plays the node's part: it claims queued tasks through the store and completes them
with a transcript (or fails them), signalling the backend's `FinalTasks` as a node does, so
that result and OpenAI paths run end to end. The same
tests can run against the real Node: they use only the `Backend` protocol.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI

from gpuscribe.api.app import create_app
from gpuscribe.api.backend import CalibrationRow, DeviceTrace, DeviceView, QueueFull
from gpuscribe.api.reads import StoreReads
from gpuscribe.config import Settings
from gpuscribe.domain import NewTask, Segment, Task, Transcript, Word
from gpuscribe.memory.types import GIB, EstimateSource, MemoryEstimate, ProfileKey
from gpuscribe.metrics import Metrics
from gpuscribe.node.final_tasks import FinalTasks
from gpuscribe.store.base import Claim, TaskStore
from gpuscribe.store.memory import InMemoryStore
from gpuscribe.telemetry.base import DeviceKind, DeviceReading
from gpuscribe.telemetry.history import DeviceSample

TEST_TEXT = "Hello from gpuscribe. This is a test."
GPU_TOTAL = 24 * GIB


def sample_transcript(task: Task) -> Transcript:
    """Two segments with words, the task's kind and duration."""
    words_a = (
        Word(0.0, 0.5, " Hello", 0.9),
        Word(0.5, 0.8, " from", 0.9),
        Word(0.8, 1.5, " gpuscribe.", 0.8),
    )
    words_b = (
        Word(2.0, 2.3, " This", 0.9),
        Word(2.3, 2.5, " is", 0.9),
        Word(2.5, 2.7, " a", 0.9),
        Word(2.7, 3.2, " test.", 0.9),
    )
    segments = (
        Segment(0, 0.0, 1.5, " Hello from gpuscribe.", words_a, -0.2, 0.01, 1.1, 0.0, (1, 2)),
        Segment(1, 2.0, 3.25, " This is a test.", words_b, -0.3, 0.02, 1.2, 0.0, (3, 4)),
    )
    return Transcript(TEST_TEXT, "en", task.audio_seconds, segments, task.options.task)


@dataclass
class ApiTestBackend(StoreReads):
    """`Backend` over a real store, without scheduler or workers."""

    settings: Settings
    store: TaskStore = field(default_factory=InMemoryStore)
    metrics: Metrics = field(default_factory=Metrics)
    engine: str = "faster-whisper"
    retry_after_seconds: int = 7
    is_healthy: bool = True
    submitted: list[NewTask] = field(default_factory=list)
    finals: FinalTasks = field(default_factory=FinalTasks)

    @property
    def default_engine(self) -> str:
        return self.engine

    def submit(self, new: NewTask) -> tuple[Task, bool]:
        if self.store.count_queued() >= self.settings.max_queue_length:
            self.metrics.submissions.labels("rejected").inc()
            raise QueueFull(self.retry_after_seconds)
        self.submitted.append(new)
        task, created = self.store.add(new, now=time.time())
        self.metrics.submissions.labels("accepted" if created else "duplicate").inc()
        return task, created

    def cancel(self, task_id: str) -> Task | None:
        task = self.store.cancel(task_id, now=time.time())
        if task is not None and task.state.is_final:
            self.finals.signal(task_id)
        return task

    def watch_final(self, task_id: str, notify: Callable[[], None]) -> AbstractContextManager[None]:
        return self.finals.watch(task_id, notify)

    def devices(self, *, fresh: bool = False) -> list[DeviceView]:
        return [self._device(i) for i in range(2)]

    def _device(self, index: int) -> DeviceView:
        reading = DeviceReading(
            index=index,
            uuid=f"GPU-sim-{index}",
            name="Simulated 24GiB",
            kind=DeviceKind.SIMULATED,
            memory_total_bytes=GPU_TOTAL,
            memory_used_bytes=2 * GIB,
            memory_free_bytes=GPU_TOTAL - 2 * GIB,
            read_at=time.time(),
            utilization_percent=10.0,
            temperature_c=40.0,
            power_watts=80.0,
            compute_capability=(9, 0),
        )
        cap = int(GPU_TOTAL * self.settings.max_memory_utilization)
        return DeviceView(
            reading, GIB, cap, 0, self.settings.max_tasks_per_gpu, ("tiny.en",), False
        )

    def device_history(self, seconds: float) -> list[DeviceTrace]:
        """One sample per device: the reading of now."""
        views = self.devices()
        return [
            DeviceTrace(v.reading.index, v.reading.uuid, "test-node", [sample_of(v)]) for v in views
        ]

    def estimate(self, key: ProfileKey, audio_seconds: float) -> MemoryEstimate:
        return MemoryEstimate(0, 80 * 1024**2, 300 * 1024**2, EstimateSource.PRIOR)

    def calibration(self) -> list[CalibrationRow]:
        rows: dict[ProfileKey, list[int]] = {}
        limit = self.settings.calibration_sample_size
        for sample in self.store.all_samples(per_key_limit=limit):
            rows.setdefault(sample.key, []).append(sample.working_bytes)
        return [
            CalibrationRow(key, self.estimate(key, 0.0), len(v), sum(v) / len(v), max(v), None)
            for key, v in rows.items()
        ]

    def healthy(self) -> bool:
        return self.is_healthy


def sample_of(view: DeviceView) -> DeviceSample:
    return DeviceSample.of(
        view.reading,
        foreign_bytes=0,
        reserved_bytes=view.memory_reserved_bytes,
        cap_bytes=view.memory_cap_bytes,
    )


Outcome = Callable[[Task], Transcript | str]


class Completer:
    """Claims queued tasks through the backend's store and completes them (a str outcome fails
    the task), then signals them final. `paused` leaves tasks queued; `hold` leaves claimed
    tasks running."""

    def __init__(self, backend: ApiTestBackend, outcome: Outcome = sample_transcript) -> None:
        self.store = backend.store
        self.finals = backend.finals
        self.outcome = outcome
        self.paused = threading.Event()
        self.hold = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="completer", daemon=True)

    def __enter__(self) -> Completer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            if self.paused.is_set():
                continue
            for task in self.store.queued(now=time.time(), limit=20):
                self._run(task)

    def _run(self, task: Task) -> None:
        claim = Claim(task.id, "test-node", 0, "GPU-sim-0", 400 * 1024**2, lease_seconds=60)
        claimed = self.store.claim(claim, now=time.time())
        if claimed is None or claimed.lease_token is None:
            return
        self.store.set_progress(task.id, claimed.lease_token, 0.5)
        while self.hold.is_set() and not self._stop.is_set():
            time.sleep(0.01)
        outcome = self.outcome(claimed)
        token, now = claimed.lease_token, time.time()
        if isinstance(outcome, str):
            self.store.fail(task.id, token, outcome, retry_at=None, now=now)
        else:
            self.store.complete(task.id, token, outcome, peak_bytes=350 * 1024**2, now=now)
        self.finals.signal(task.id)


def make_app(data_dir: str, **overrides: object) -> tuple[ApiTestBackend, FastAPI]:
    """A test backend with settings (data under `data_dir`) and the app over it."""
    settings = Settings(data_dir=data_dir, **overrides)  # type: ignore[arg-type]
    settings.audio_dir.mkdir(parents=True, exist_ok=True)  # as a Node makes it at start
    backend = ApiTestBackend(settings.validate())
    return backend, create_app(backend)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Run `app` under uvicorn on a free port in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
