"""The worker process and its parent handle: pure parts, the worker loop in-process with a fake
engine, then a real worker process on the CPU with faster-whisper tiny.en."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gpuscribe.config import Settings
from gpuscribe.domain import InvalidRequest, Priority, Segment, Transcript, TranscriptionOptions
from gpuscribe.memory.types import ModelKey
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.handle import ProcessWorker, orphan_failure, restart_delay
from gpuscribe.workers.messages import (
    CancelTask,
    DeviceRef,
    FailureKind,
    ModelLoaded,
    ModelUnloaded,
    RunTask,
    Shutdown,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    WorkerEvent,
    WorkerReady,
)
from gpuscribe.workers.process import (
    ModelCache,
    Outbox,
    Worker,
    accepts,
    classify_failure,
    prepare_environment,
)
from support.audio import AudioSet
from support.events import Events

CPU = DeviceRef(kind=DeviceKind.CPU, uuid="cpu", index=0, name="CPU")
GPU = DeviceRef(kind=DeviceKind.CUDA, uuid="GPU-1234", index=1, name="NVIDIA H100")
FAST = TranscriptionOptions(model="tiny.en", compute_type="int8", beam_size=1, language="en")
TINY = ModelKey("faster-whisper", "tiny.en", "int8")


def run_task(task_id: str, path: Path | str, options: TranscriptionOptions = FAST) -> RunTask:
    return RunTask(
        task_id, f"lease-{task_id}", str(path), 10.0, options, admitted_bytes=2 * 1024**3
    )


# --- pure parts -------------------------------------------------------------------------------
def test_cuda_worker_sees_only_its_own_gpu() -> None:
    env: dict[str, str] = {}
    prepare_environment(GPU, env)
    assert env == {
        "CUDA_VISIBLE_DEVICES": "GPU-1234",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    cpu_env: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "0"}
    prepare_environment(CPU, cpu_env)
    assert cpu_env == {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize(
    ("exc", "decoding", "kind"),
    [
        (InvalidRequest("not audio"), True, FailureKind.BAD_INPUT),
        (InvalidRequest("bad language"), False, FailureKind.BAD_INPUT),
        (ValueError("odd header"), True, FailureKind.BAD_INPUT),
        (FileNotFoundError("gone"), True, FailureKind.NODE_LOCAL),
        (
            RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            False,
            FailureKind.OUT_OF_MEMORY,
        ),
        (type("OutOfMemoryError", (RuntimeError,), {})("oom"), False, FailureKind.OUT_OF_MEMORY),
        (MemoryError(), True, FailureKind.OUT_OF_MEMORY),
        (TaskCancelled("stop"), False, FailureKind.CANCELLED),
        (KeyError("x"), False, FailureKind.TRANSIENT),
        (BrokenProcessPool("a decoding child died"), True, FailureKind.TRANSIENT),
        (CancelledError(), True, FailureKind.CANCELLED),  # a decode cancelled by shutdown
    ],
)
def test_failures_are_classified(exc: BaseException, decoding: bool, kind: FailureKind) -> None:
    assert classify_failure(exc, decoding=decoding) is kind


def test_restart_delay_doubles_for_failed_starts_up_to_a_cap() -> None:
    assert restart_delay(1.0, 0) == 1.0
    assert restart_delay(1.0, 3) == 8.0
    assert restart_delay(1.0, 50) == 30.0


def test_orphans_of_an_ended_worker() -> None:
    died = orphan_failure("a", stopping=False, killed_for=None, exitcode=-9)
    assert died == (FailureKind.TRANSIENT, "worker process died (exit code -9)")
    assert (
        orphan_failure("a", stopping=False, killed_for="a", exitcode=-9)[0] is FailureKind.TIMEOUT
    )
    assert orphan_failure("b", stopping=False, killed_for="a", exitcode=-9) == (
        FailureKind.TRANSIENT,
        "worker restarted",
    )
    assert (
        orphan_failure("a", stopping=True, killed_for=None, exitcode=0)[0] is FailureKind.TRANSIENT
    )


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.loaded: list[ModelKey] = []
        self.unloaded: list[ModelKey] = []
        self.delay = delay

    def load(self, key: ModelKey) -> str:
        time.sleep(self.delay)
        self.loaded.append(key)
        return f"model:{key.model}"

    def unload(self, key: ModelKey, model: str) -> None:
        self.unloaded.append(key)


def test_model_cache_loads_a_key_once_for_concurrent_tasks() -> None:
    recorder = Recorder(delay=0.1)
    cache: ModelCache[str] = ModelCache(recorder.load, recorder.unload)
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(cache.acquire(TINY))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.loaded == [TINY] and got == ["model:tiny.en"] * 4


def test_model_cache_evicts_a_model_in_use_once_its_last_task_is_done() -> None:
    recorder = Recorder()
    cache: ModelCache[str] = ModelCache(recorder.load, recorder.unload)
    cache.acquire(TINY)
    cache.acquire(TINY)
    cache.evict(TINY)
    cache.release(TINY)
    assert recorder.unloaded == []
    cache.release(TINY)
    assert recorder.unloaded == [TINY] and cache.resident() == {}
    cache.acquire(TINY)
    cache.release(TINY)
    cache.evict(TINY)  # idle: at once
    assert recorder.unloaded == [TINY, TINY]


# --- the worker loop in-process, with a fake engine -------------------------------------------
class FakeMemory:
    context_bytes = 0

    def __init__(self) -> None:
        self.held = 1000
        self.releases = 0
        self.limits: list[int] = []

    def held_bytes(self) -> int:
        return self.held

    def peak_bytes(self) -> int:
        return self.held

    def release_cached(self) -> None:
        self.releases += 1

    def limit(self, admitted_bytes: int) -> None:
        self.limits.append(admitted_bytes)


class FakeModel:
    """Behaves as its task's `initial_prompt` says: oom, boom, wait, or transcribe."""

    weights_bytes = 500

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscriptionOptions,
        on_segment: Callable[[Segment, float], None],
        should_stop: Callable[[], bool],
    ) -> Transcript:
        if options.initial_prompt == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        if options.initial_prompt == "boom":
            raise KeyError("engine bug")
        while options.initial_prompt == "wait":
            if should_stop():
                raise TaskCancelled("stopped")
            time.sleep(0.01)
        segment = Segment(0, 0.0, 1.0, " hello")
        on_segment(segment, 0.5)
        return Transcript("hello", "en", 1.0, (segment,))

    def unload(self) -> None:
        return None


class FakeEngine:
    name = "faster-whisper"

    def load(self, model: str, device: DeviceRef, compute_type: str) -> FakeModel:
        return FakeModel()


Loop = tuple[Worker, FakeMemory, Connection]


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Loop]:
    monkeypatch.chdir(tmp_path)  # the tasks' audio: files here, read through the audio store
    for name in ("a.wav", "notes.txt"):
        (tmp_path / name).write_bytes(b"RIFF")
    decode_module = importlib.import_module("gpuscribe.audio.decode")
    registry_module = importlib.import_module("gpuscribe.workers.engines.registry")

    def fake_decode(path: str, *, sample_rate: int = 16000) -> npt.NDArray[np.float32]:
        if path.endswith(".txt"):
            raise InvalidRequest("cannot decode the audio")
        return np.zeros(sample_rate, dtype=np.float32)

    monkeypatch.setattr(decode_module, "decode", fake_decode)
    monkeypatch.setattr(registry_module, "create_engine", lambda name, settings: FakeEngine())
    ours, theirs = multiprocessing.Pipe()
    memory = FakeMemory()
    worker = Worker(CPU, Settings(), Outbox(theirs), memory)
    yield worker, memory, ours
    worker.shutdown(join_seconds=2.0)


def receive_final(conn: Connection, task_id: str) -> tuple[list[WorkerEvent], WorkerEvent]:
    seen: list[WorkerEvent] = []
    while conn.poll(5.0):
        event = conn.recv()
        seen.append(event)
        if isinstance(event, TaskCompleted | TaskFailed) and event.task_id == task_id:
            return seen, event
    raise AssertionError(f"no final event for {task_id}; got {seen}")


def prompted(task_id: str, prompt: str | None, path: str = "a.wav") -> RunTask:
    options = TranscriptionOptions(compute_type="int8", initial_prompt=prompt)
    return run_task(task_id, path, options)


def test_worker_loop_completes_with_progress_and_a_sample(loop: Loop) -> None:
    worker, memory, conn = loop
    worker.handle(prompted("ok", None))
    seen, final = receive_final(conn, "ok")
    assert isinstance(seen[0], TaskStarted) and isinstance(final, TaskCompleted)
    assert [e.progress for e in seen if isinstance(e, TaskProgress)] == [0.5, 1.0]
    assert next(e for e in seen if isinstance(e, ModelLoaded)).weights_bytes == 500  # no RSS rise
    assert final.transcript.text == "hello" and final.ran_alone and final.working_bytes == 0
    assert memory.limits == [2 * 1024**3]


def test_worker_loop_reports_oom_and_empties_the_cache(loop: Loop) -> None:
    worker, memory, conn = loop
    worker.handle(prompted("oom", "oom"))
    _, final = receive_final(conn, "oom")
    assert isinstance(final, TaskFailed) and final.kind is FailureKind.OUT_OF_MEMORY
    assert "out of memory" in final.error
    releases = memory.releases
    worker.handle(prompted("after", None))
    _, after = receive_final(conn, "after")
    assert isinstance(after, TaskCompleted) and releases >= 2  # baseline + OOM


def test_worker_loop_classifies_bad_input_and_engine_errors(loop: Loop) -> None:
    worker, _, conn = loop
    worker.handle(prompted("bad", None, path="notes.txt"))
    _, bad = receive_final(conn, "bad")
    assert isinstance(bad, TaskFailed) and bad.kind is FailureKind.BAD_INPUT
    worker.handle(prompted("bug", "boom"))
    _, bug = receive_final(conn, "bug")
    assert isinstance(bug, TaskFailed) and bug.kind is FailureKind.TRANSIENT
    assert "engine bug" in bug.error


def test_worker_loop_cancel_and_shutdown(loop: Loop) -> None:
    worker, _, conn = loop
    worker.handle(prompted("c", "wait"))
    worker.handle(prompted("s", "wait"))
    time.sleep(0.1)
    worker.handle(CancelTask("c"))
    _, cancelled = receive_final(conn, "c")
    assert isinstance(cancelled, TaskFailed) and cancelled.kind is FailureKind.CANCELLED
    assert worker.handle(Shutdown()) is False
    worker.shutdown(join_seconds=2.0)
    _, stopped = receive_final(conn, "s")
    assert isinstance(stopped, TaskFailed) and stopped.kind is FailureKind.TRANSIENT
    assert stopped.error == "worker shut down while the task ran"
    rest = [conn.recv() for _ in iter(lambda: conn.poll(0.1), False)]
    assert rest == [ModelUnloaded(CPU.uuid, TINY)]


class BatchedFakeModel(FakeModel):
    """What the batched transformers engine adds: a cache held beside the weights, and the
    task's priority."""

    cache_bytes = 4000

    def __init__(self) -> None:
        self.priorities: list[int] = []

    def transcribe(  # type: ignore[override]
        self,
        audio: npt.NDArray[np.float32],
        options: TranscriptionOptions,
        on_segment: Callable[[Segment, float], None],
        should_stop: Callable[[], bool],
        priority: int = 0,
    ) -> Transcript:
        self.priorities.append(priority)
        return super().transcribe(audio, options, on_segment, should_stop)


class BatchedFakeEngine:
    name = "transformers"

    def __init__(self, memory: FakeMemory) -> None:
        self.memory = memory
        self.rows: list[int] = []
        self.model = BatchedFakeModel()

    def load(
        self, model: str, device: DeviceRef, compute_type: str, batch_rows: int = 0
    ) -> BatchedFakeModel:
        self.rows.append(batch_rows)
        # weights, the batch's cache, and the pool its captured steps draw on (300)
        self.memory.held += 500 + self.model.cache_bytes + 300
        return self.model


def test_accepts_reads_a_callables_parameters() -> None:
    assert accepts(BatchedFakeEngine.load, "batch_rows")
    assert not accepts(FakeEngine().load, "batch_rows")
    assert accepts(BatchedFakeModel().transcribe, "priority")
    assert not accepts(FakeModel().transcribe, "priority")
    assert not accepts(len, "priority")


def test_the_batch_gets_the_ledgers_rows_and_the_tasks_priority(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a GPU the ledger's rows reach the engine's load, the task's priority its transcribe,
    and neither the model's cache nor what its load allocated for its rows is reported as
    weights (the ledger charges them with the batch)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    decode_module = importlib.import_module("gpuscribe.audio.decode")
    registry_module = importlib.import_module("gpuscribe.workers.engines.registry")
    monkeypatch.setattr(
        decode_module, "decode", lambda path, sample_rate=16000: np.zeros(16000, np.float32)
    )
    # decoded in the task's thread (where the fake decode is), not in a child process
    monkeypatch.setattr(importlib.import_module("gpuscribe.workers.process"),
                        "decode_processes", lambda cpus: 0)  # fmt: skip
    memory = FakeMemory()
    engine = BatchedFakeEngine(memory)
    monkeypatch.setattr(registry_module, "create_engine", lambda name, settings: engine)
    ours, theirs = multiprocessing.Pipe()
    worker = Worker(GPU, Settings(), Outbox(theirs), memory)
    try:
        options = TranscriptionOptions(engine="transformers", model="large-v3")
        command = run_task("urgent", "a.wav", options)
        worker.handle(replace(command, batch_rows=48, priority=int(Priority.URGENT)))
        seen, final = receive_final(ours, "urgent")
        assert isinstance(final, TaskCompleted)
        assert engine.rows == [48]
        assert engine.model.priorities == [int(Priority.URGENT)]
        assert next(e for e in seen if isinstance(e, ModelLoaded)).weights_bytes == 500
        worker.handle(replace(command, task_id="low", priority=int(Priority.LOW)))
        receive_final(ours, "low")
        assert engine.rows == [48]  # loaded once
        assert engine.model.priorities == [int(Priority.URGENT), int(Priority.LOW)]
    finally:
        worker.shutdown(join_seconds=2.0)


# --- a real worker process on the CPU ---------------------------------------------------------
@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSet:
    return AudioSet(tmp_path_factory.mktemp("worker-audio"))


Cpu = tuple[ProcessWorker, Events]


@pytest.fixture(scope="module")
def cpu_worker() -> Iterator[Cpu]:
    events = Events()
    worker = ProcessWorker(CPU, Settings(cpu_threads=2), events, restart_backoff_seconds=0.2)
    worker.start()
    yield worker, events
    worker.stop(timeout=10.0)
    assert not worker.alive()


def ready(worker: ProcessWorker, events: Events, since: int) -> WorkerReady:
    event = events.wait_for(lambda e: isinstance(e, WorkerReady), since=since, timeout=60.0)
    assert isinstance(event, WorkerReady)
    deadline = time.monotonic() + 10.0
    while not worker.alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return event


def test_process_transcribes_two_tasks_with_one_model_load(
    cpu_worker: Cpu, audio: AudioSet
) -> None:
    worker, events = cpu_worker
    first = ready(worker, events, 0)
    assert first.context_bytes == 0 and worker.pids() == {first.pid} != {os.getpid()}
    clip = audio.speech(0)
    worker.run(run_task("one", clip.path))
    worker.run(run_task("two", clip.path))
    for task_id in ("one", "two"):
        done = events.final(task_id)
        assert isinstance(done, TaskCompleted), done
        words = done.transcript.text.lower()
        assert all(word in words for word in ("river", "children", "afternoon")), words
        assert done.peak_bytes is not None and done.peak_bytes > 0
        assert done.working_bytes is not None and done.working_bytes >= 0
        progress = [
            e.progress for e in events.items if isinstance(e, TaskProgress) and e.task_id == task_id
        ]
        assert progress == sorted(progress) and progress[-1] == 1.0
    loads = [e for e in events.items if isinstance(e, ModelLoaded)]
    assert len(loads) == 1 and loads[0].model == TINY and loads[0].weights_bytes > 0


def test_process_cancel_stops_a_long_task(cpu_worker: Cpu, audio: AudioSet) -> None:
    worker, events = cpu_worker
    ready(worker, events, 0)
    mark = events.mark()
    worker.run(run_task("long", audio.long_speech(repeats=2)))  # 145 s of speech
    events.wait_for(lambda e: isinstance(e, TaskStarted) and e.task_id == "long", since=mark)
    time.sleep(1.0)  # into decoding and transcription
    worker.cancel("long")
    failed = events.final("long", timeout=120.0)  # CANCELLED, not completed: it stopped early
    assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.CANCELLED
    assert worker.running_tasks() == set()


def test_process_sigkill_fails_running_tasks_and_restarts(cpu_worker: Cpu, audio: AudioSet) -> None:
    worker, events = cpu_worker
    ready(worker, events, 0)
    (old_pid,) = worker.pids()
    mark = events.mark()
    worker.run(run_task("doomed", audio.long_speech(repeats=2)))
    events.wait_for(lambda e: isinstance(e, TaskStarted) and e.task_id == "doomed", since=mark)
    os.kill(old_pid, signal.SIGKILL)
    failed = events.final("doomed", timeout=30.0)
    assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.TRANSIENT
    assert failed.error == "worker process died (exit code -9)"
    again = ready(worker, events, mark)
    assert again.pid != old_pid and worker.pids() == {again.pid}


def test_process_kill_task_times_out_one_task_and_restarts(
    cpu_worker: Cpu, audio: AudioSet
) -> None:
    worker, events = cpu_worker
    ready(worker, events, 0)
    (old_pid,) = worker.pids()
    mark = events.mark()
    long = audio.long_speech(repeats=2)
    worker.run(run_task("stuck", long))
    worker.run(run_task("bystander", long))
    events.wait_for(lambda e: isinstance(e, TaskStarted) and e.task_id == "bystander", since=mark)
    worker.kill_task("stuck")
    stuck, bystander = events.final("stuck"), events.final("bystander")
    assert isinstance(stuck, TaskFailed) and stuck.kind is FailureKind.TIMEOUT
    assert isinstance(bystander, TaskFailed) and bystander.kind is FailureKind.TRANSIENT
    assert bystander.error == "worker restarted"
    assert ready(worker, events, mark).pid != old_pid


def test_process_bad_input_then_keeps_serving(cpu_worker: Cpu, audio: AudioSet) -> None:
    worker, events = cpu_worker
    ready(worker, events, 0)
    worker.run(run_task("junk", audio.random_bytes()))
    junk = events.final("junk")
    assert isinstance(junk, TaskFailed) and junk.kind is FailureKind.BAD_INPUT, junk
    worker.run(run_task("fine", audio.speech(0).path))
    fine = events.final("fine")
    assert isinstance(fine, TaskCompleted), fine
    assert worker.running_tasks() == set()
