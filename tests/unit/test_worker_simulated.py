"""SimulatedWorker: what it charges the simulated device, and the events it reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from gpuscribe.config import Settings
from gpuscribe.domain import TranscriptionOptions
from gpuscribe.memory.profiles import (
    REFERENCE_CONTEXT_BYTES,
    reference_weights_bytes,
    reference_working_bytes,
)
from gpuscribe.memory.types import MIB, ModelKey
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.telemetry.simulated import SimulatedGpus
from gpuscribe.workers.messages import (
    DeviceRef,
    FailureKind,
    ModelLoaded,
    ModelUnloaded,
    RunTask,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    WorkerReady,
)
from gpuscribe.workers.simulated import SimulatedWorker, simulated_transcript
from support.events import Events

PID = 900_000
SPEED = 100.0  # 30 s of audio take 0.3 s
TINY = ModelKey("faster-whisper", "tiny.en", "default")
BASE = ModelKey("faster-whisper", "base", "default")


def task(
    task_id: str, audio_seconds: float, model: str = "tiny.en", evict: tuple[ModelKey, ...] = ()
) -> RunTask:
    options = TranscriptionOptions(model=model, beam_size=5, batch_size=1)
    return RunTask(
        task_id=task_id,
        lease_token=f"lease-{task_id}",
        audio_path="/nonexistent/never-read.wav",
        audio_seconds=audio_seconds,
        options=options,
        admitted_bytes=8 * 1024**3,
        evict=evict,
    )


def working(model: str = "tiny.en") -> int:
    return reference_working_bytes(model, 1, 5)


Sim = tuple[SimulatedWorker, SimulatedGpus, Events, str]


def make_worker(spec: str = "1x24GiB") -> Sim:
    gpus = SimulatedGpus(spec)
    reading = gpus.discover()[0]
    device = DeviceRef(DeviceKind.SIMULATED, reading.uuid, 0, reading.name)
    events = Events()
    worker = SimulatedWorker(device, gpus, Settings(simulation_speed=SPEED), events, pid=PID)
    return worker, gpus, events, reading.uuid


@pytest.fixture
def sim() -> Iterator[Sim]:
    worker, gpus, events, uuid = make_worker()
    worker.start()
    yield worker, gpus, events, uuid
    worker.stop(timeout=5.0)


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_start_charges_the_context_and_reports_ready(sim: Sim) -> None:
    worker, gpus, events, uuid = sim
    ready = events.wait_for(lambda e: isinstance(e, WorkerReady))
    assert ready == WorkerReady(uuid, PID, REFERENCE_CONTEXT_BYTES)
    assert gpus.held_by(uuid, PID) == REFERENCE_CONTEXT_BYTES
    assert worker.alive() and worker.pids() == {PID}
    assert gpus.read(uuid).used_by({PID}) == REFERENCE_CONTEXT_BYTES


def test_memory_rises_while_a_task_runs_and_falls_after(sim: Sim) -> None:
    worker, gpus, events, uuid = sim
    weights = reference_weights_bytes("tiny.en")
    worker.run(task("t1", 65.0))
    running = REFERENCE_CONTEXT_BYTES + weights + working()
    wait_until(lambda: gpus.held_by(uuid, PID) == running)
    done = events.final("t1")
    assert isinstance(done, TaskCompleted)
    assert gpus.held_by(uuid, PID) == REFERENCE_CONTEXT_BYTES + weights  # weights stay resident
    assert done.peak_bytes == running
    assert done.working_bytes == working()
    assert done.ran_alone is True
    assert done.seconds >= 65.0 / SPEED * 0.9
    transcript = done.transcript
    assert transcript.simulated and transcript.duration == 65.0
    assert [s.text for s in transcript.segments] == ["[simulated]"] * 3


def test_events_come_in_order_and_progress_rises_to_one(sim: Sim) -> None:
    worker, _, events, _ = sim
    worker.run(task("t1", 60.0))
    events.final("t1")
    mine = [e for e in events.items if getattr(e, "task_id", None) == "t1"]
    assert isinstance(mine[0], TaskStarted) and isinstance(mine[-1], TaskCompleted)
    progress = [e.progress for e in mine if isinstance(e, TaskProgress)]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len(progress) <= 60.0 / SPEED * 4 + 2  # throttled: about four a second


def test_two_tasks_of_one_model_pay_its_weights_once(sim: Sim) -> None:
    worker, gpus, events, uuid = sim
    weights = reference_weights_bytes("tiny.en")
    worker.run(task("a", 60.0))
    worker.run(task("b", 60.0))
    both = REFERENCE_CONTEXT_BYTES + weights + 2 * working()
    wait_until(lambda: gpus.held_by(uuid, PID) == both)
    first, second = events.final("a"), events.final("b")
    assert isinstance(first, TaskCompleted) and isinstance(second, TaskCompleted)
    loads = events.of(ModelLoaded)
    assert len(loads) == 1 and isinstance(loads[0], ModelLoaded)
    assert loads[0].weights_bytes == weights and loads[0].model == TINY
    assert not first.ran_alone and not second.ran_alone
    assert gpus.peak_used(uuid) == both
    assert gpus.held_by(uuid, PID) == REFERENCE_CONTEXT_BYTES + weights


def test_cancel_stops_a_long_task_and_frees_its_memory(sim: Sim) -> None:
    worker, gpus, events, uuid = sim
    worker.run(task("long", 3600.0))
    events.wait_for(lambda e: isinstance(e, TaskProgress) and e.task_id == "long")
    worker.cancel("long")
    failed = events.final("long", timeout=2.0)
    assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.CANCELLED
    assert gpus.held_by(uuid, PID) == REFERENCE_CONTEXT_BYTES + reference_weights_bytes("tiny.en")


def test_kill_task_reports_a_timeout(sim: Sim) -> None:
    worker, _, events, _ = sim
    worker.run(task("stuck", 3600.0))
    events.wait_for(lambda e: isinstance(e, TaskStarted))
    worker.kill_task("stuck")
    failed = events.final("stuck", timeout=2.0)
    assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.TIMEOUT


def test_an_over_admitted_task_fails_out_of_memory() -> None:
    weights = reference_weights_bytes("tiny.en")
    room = (REFERENCE_CONTEXT_BYTES + weights + working() - 1) // MIB  # weights fit, work does not
    worker, gpus, events, uuid = make_worker(f"1x{room}MiB")
    worker.start()
    try:
        worker.run(task("big", 30.0))
        failed = events.final("big")
        assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.OUT_OF_MEMORY
        assert gpus.held_by(uuid, PID) == REFERENCE_CONTEXT_BYTES + weights
        assert gpus.peak_used(uuid) <= room * MIB
    finally:
        worker.stop(timeout=5.0)


def test_a_model_that_does_not_fit_fails_out_of_memory_and_stays_unloaded() -> None:
    worker, gpus, events, uuid = make_worker("1x3GiB")
    worker.start()
    try:
        worker.run(task("huge", 30.0, model="large-v3"))
        failed = events.final("huge")
        assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.OUT_OF_MEMORY
        assert events.of(ModelLoaded) == []
        assert gpus.held_by(uuid, PID) == REFERENCE_CONTEXT_BYTES
    finally:
        worker.stop(timeout=5.0)


def test_evict_unloads_an_idle_model_before_loading(sim: Sim) -> None:
    worker, gpus, events, uuid = sim
    worker.run(task("a", 3.0))
    events.final("a")
    worker.run(task("b", 3.0, model="base", evict=(TINY,)))
    done = events.final("b")
    assert isinstance(done, TaskCompleted)
    assert events.of(ModelUnloaded) == [ModelUnloaded(uuid, TINY)]
    assert gpus.held_by(uuid, PID) == REFERENCE_CONTEXT_BYTES + reference_weights_bytes("base")
    assert done.peak_bytes == (
        REFERENCE_CONTEXT_BYTES + reference_weights_bytes("base") + working("base")
    )
    assert [e.model for e in events.of(ModelLoaded) if isinstance(e, ModelLoaded)] == [TINY, BASE]


def test_unknown_model_is_bad_input(sim: Sim) -> None:
    worker, _, events, _ = sim
    worker.run(task("x", 3.0, model="no-such-model"))
    failed = events.final("x")
    assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.BAD_INPUT


def test_stop_frees_everything_and_fails_running_tasks_transiently() -> None:
    worker, gpus, events, uuid = make_worker()
    worker.start()
    worker.run(task("long", 3600.0))
    events.wait_for(lambda e: isinstance(e, TaskStarted))
    worker.stop(timeout=5.0)
    failed = events.final("long")
    assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.TRANSIENT
    assert gpus.held_by(uuid, PID) == 0
    assert not worker.alive()


def test_run_before_start_fails_transiently() -> None:
    worker, _, events, _ = make_worker()
    worker.run(task("early", 3.0))
    failed = events.final("early")
    assert isinstance(failed, TaskFailed) and failed.kind is FailureKind.TRANSIENT


def test_simulated_transcript_has_one_segment_per_window() -> None:
    transcript = simulated_transcript(61.0)
    assert transcript.text == "" and transcript.language is None and transcript.simulated
    assert [(s.start, s.end) for s in transcript.segments] == [(0, 30), (30, 60), (60, 61)]
    assert simulated_transcript(0.0).segments == ()
