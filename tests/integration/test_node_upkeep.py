"""node.upkeep: lease heartbeats, cancels and timeouts, recovery, pruning and device watching,
over a real store, simulated GPUs and their simulated workers, with a fake clock for the node's
time (the simulated workers sleep in real time; tasks here are an hour long, so they run until
stopped)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from gpuscribe.config import Settings, load_settings
from gpuscribe.domain import NewTask, Priority, TaskState, TranscriptionOptions
from gpuscribe.memory.profiles import REFERENCE_CONTEXT_BYTES
from gpuscribe.memory.types import GIB, ModelKey
from gpuscribe.metrics import Metrics
from gpuscribe.node.devices import DeviceSlot
from gpuscribe.node.final_tasks import FinalTasks
from gpuscribe.node.parts import build_parts
from gpuscribe.node.running import RunningTasks
from gpuscribe.node.scheduler import SchedulerPass
from gpuscribe.node.upkeep import KILL_GRACE_SECONDS, Upkeep
from gpuscribe.node.workers import make_worker
from gpuscribe.store.base import Claim, TaskStore
from gpuscribe.store.memory import InMemoryStore
from gpuscribe.telemetry.simulated import SimulatedGpus
from gpuscribe.workers.base import EventSink, WorkerHandle
from gpuscribe.workers.messages import (
    DeviceRef,
    FailureKind,
    RunTask,
    TaskFailed,
    TaskStarted,
    WorkerReady,
)
from support.clock import Clock

T0 = 1_000_000.0
GPU_NAME = "NVIDIA H200"
TINY = TranscriptionOptions(model="tiny.en", engine="transformers", compute_type="float16")
LONG_AUDIO = 3600.0


class StubbornWorker:
    """A `WorkerHandle` whose tasks ignore cancels, written for this test only: a
    `SimulatedWorker` always honours a cancel within a few milliseconds, so it cannot show the
    node killing a task that did not stop within KILL_GRACE_SECONDS. It reports ready and
    started like a real worker, records every cancel and kill, and ends a task only when
    killed (as TIMEOUT, like the process worker does)."""

    def __init__(self, device: DeviceRef, sink: EventSink) -> None:
        self.device = device
        self._sink = sink
        self.cancels: list[str] = []
        self.kills: list[str] = []
        self.unloads: list[ModelKey] = []
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._sink(WorkerReady(self.device.uuid, 4242, REFERENCE_CONTEXT_BYTES))

    def run(self, command: RunTask) -> None:
        with self._lock:
            self._tokens[command.task_id] = command.lease_token
        self._sink(TaskStarted(command.task_id, command.lease_token))

    def cancel(self, task_id: str) -> None:
        with self._lock:
            self.cancels.append(task_id)  # and carry on regardless

    def unload(self, model: ModelKey) -> None:
        with self._lock:
            self.unloads.append(model)

    def kill_task(self, task_id: str) -> None:
        with self._lock:
            self.kills.append(task_id)
            token = self._tokens.pop(task_id)
        self._sink(TaskFailed(task_id, token, FailureKind.TIMEOUT, "killed after its timeout"))

    def alive(self) -> bool:
        return True

    def pids(self) -> set[int]:
        return {4242}

    def stop(self, timeout: float = 10.0) -> None:
        pass


@dataclass
class Rig:
    settings: Settings
    store: TaskStore
    gpus: SimulatedGpus
    slots: dict[str, DeviceSlot]
    running: RunningTasks
    metrics: Metrics
    clock: Clock
    scheduler: SchedulerPass
    upkeep: Upkeep
    audio_dir: Path
    wakes: list[None] = field(default_factory=list)
    finals: FinalTasks = field(default_factory=FinalTasks)

    @property
    def uuids(self) -> list[str]:
        return list(self.slots)

    def submit(self, name: str, *, max_attempts: int = 3) -> str:
        audio = self.audio_dir / f"{name}.wav"
        audio.write_bytes(b"RIFF")
        new = NewTask(
            Priority.NORMAL, TINY, str(audio), LONG_AUDIO, "wav", max_attempts=max_attempts
        )
        task, _ = self.store.add(new, now=self.clock())
        return task.id

    def place(self, name: str = "a") -> str:
        task_id = self.submit(name)
        assert self.scheduler.run_once() == 1
        assert self.state(task_id) is TaskState.RUNNING
        return task_id

    def state(self, task_id: str) -> TaskState | None:
        task = self.store.get(task_id)
        return None if task is None else task.state

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.01)

    def counter(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def build_rig(
    tmp_path: Path,
    spec: str,
    worker_factory: Callable[[DeviceRef, Settings, SimulatedGpus, EventSink], WorkerHandle],
    **flags: Any,
) -> Rig:
    settings = load_settings(
        flags={"data_dir": str(tmp_path), "node_name": "node-a", "simulation_speed": 1.0, **flags},
        env={},
    )
    gpus = SimulatedGpus(spec)
    clock = Clock(T0)
    parts = build_parts(
        settings, InMemoryStore(), gpus, clock=clock, wake=lambda: None,
        worker_factory=worker_factory,  # type: ignore[arg-type]
    )  # fmt: skip
    wakes: list[None] = []
    # An upkeep of its own, so that `wakes` holds only what upkeep asked for (not the events').
    upkeep = Upkeep(replace(parts.context, wake=lambda: wakes.append(None)))
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    shared = parts.context
    for slot in shared.slots.values():
        slot.worker.start()
    return Rig(
        settings, shared.store, gpus, dict(shared.slots), shared.running, shared.metrics, clock,
        parts.scheduler, upkeep, audio_dir, wakes, shared.finals,
    )  # fmt: skip


def simulated(
    device: DeviceRef, settings: Settings, gpus: SimulatedGpus, sink: EventSink
) -> WorkerHandle:
    return make_worker(device, settings, gpus, sink)


def stubborn(
    device: DeviceRef, settings: Settings, gpus: SimulatedGpus, sink: EventSink
) -> WorkerHandle:
    return StubbornWorker(device, sink)


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(
        spec: str = f"1x24GiB:{GPU_NAME}",
        worker_factory: Callable[..., WorkerHandle] = simulated,
        **flags: Any,
    ) -> Rig:
        rig = build_rig(tmp_path, spec, worker_factory, **flags)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for slot in rig.slots.values():
            slot.worker.stop(timeout=2.0)
        rig.store.close()


# --- heartbeat --------------------------------------------------------------------------------
def test_heartbeat_renews_the_leases_of_running_tasks(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(f"2x24GiB:{GPU_NAME}")
    ids = [rig.place("a"), rig.place("b")]
    lease = rig.settings.lease_seconds
    assert [rig.store.get(i).lease_expires_at for i in ids] == [T0 + lease] * 2  # type: ignore[union-attr]

    rig.clock.now = T0 + lease * 0.75
    rig.upkeep.heartbeat()

    for task_id in ids:
        task = rig.store.get(task_id)
        assert task is not None and task.state is TaskState.RUNNING
        assert task.lease_expires_at == rig.clock.now + lease
        assert rig.running.get(task_id).cancel_sent_at is None  # type: ignore[union-attr]
    # renewed, so recovery at the old expiry finds nothing
    rig.clock.now = T0 + lease + 1
    rig.upkeep.recover()
    assert all(rig.state(i) is TaskState.RUNNING for i in ids)
    assert rig.wakes == []


def test_progress_of_all_running_tasks_is_written_in_one_flush(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(f"2x24GiB:{GPU_NAME}")
    a, b = rig.place("a"), rig.place("b")
    running_a, running_b = rig.running.get(a), rig.running.get(b)
    assert running_a is not None and running_b is not None
    running_a.progress, running_b.progress = 0.4, 0.7
    rig.upkeep.flush_progress()
    assert [rig.store.get(i).progress for i in (a, b)] == [0.4, 0.7]  # type: ignore[union-attr]
    assert running_a.progress is None and running_b.progress is None  # written: nothing pending
    rig.store.set_progress(a, running_a.token, 0.5)
    rig.upkeep.flush_progress()  # nothing new: nothing written over it
    assert rig.store.get(a).progress == 0.5  # type: ignore[union-attr]


def test_heartbeat_with_nothing_running_does_nothing(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.upkeep.heartbeat()
    assert len(rig.running) == 0


def test_a_task_whose_lease_was_lost_is_stopped_here(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    task_id = rig.place()
    # The heartbeat was late: another node's recovery requeued the task.
    rig.clock.now = T0 + rig.settings.lease_seconds + 1
    assert rig.store.recover_expired(now=rig.clock.now) == [task_id]

    rig.upkeep.heartbeat()

    ledger = rig.slots[rig.uuids[0]].ledger
    rig.wait_until(lambda: ledger.running_tasks == 0)  # released after leaving the registry
    assert rig.running.get(task_id) is None
    task = rig.store.get(task_id)
    assert task is not None
    assert task.state is TaskState.QUEUED  # the stop did not touch the task's new life
    assert rig.slots[rig.uuids[0]].ledger.running_tasks == 0
    assert (rig.audio_dir / "a.wav").exists()


def test_a_cancel_requested_in_the_store_is_sent_to_the_worker(
    make_rig: Callable[..., Rig],
) -> None:
    """The cancel may reach the store through another node: the heartbeat finds it there."""
    rig = make_rig()
    task_id = rig.place()
    rig.store.cancel(task_id, now=rig.clock())
    rig.clock.now += 1

    rig.upkeep.heartbeat()

    sent = rig.running.get(task_id)
    assert sent is None or sent.cancel_sent_at == T0 + 1  # None: the cancel already ended it
    rig.wait_until(lambda: not (rig.audio_dir / "a.wav").exists())  # the last step of the end
    assert rig.state(task_id) is TaskState.CANCELLED
    assert rig.running.get(task_id) is None
    assert rig.slots[rig.uuids[0]].ledger.running_tasks == 0


def test_a_cancel_this_node_took_is_sent_at_once_through_the_same_flag(
    make_rig: Callable[..., Rig],
) -> None:
    """No second route: `stop_cancelled` reads the store's flags (one query) as the heartbeat
    does, without waiting for it; tasks not asked to stop carry on."""
    rig = make_rig(worker_factory=stubborn)
    worker = rig.slots[rig.uuids[0]].worker
    assert isinstance(worker, StubbornWorker)
    asked, other = rig.place("a"), rig.place("b")
    rig.store.cancel(asked, now=rig.clock())

    rig.upkeep.stop_cancelled()

    assert worker.cancels == [asked]
    assert rig.running.get(asked).cancel_sent_at == T0  # type: ignore[union-attr]
    assert rig.running.get(other).cancel_sent_at is None  # type: ignore[union-attr]


def test_a_task_that_ignores_its_cancel_is_killed_after_the_grace_period(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(worker_factory=stubborn)
    worker = rig.slots[rig.uuids[0]].worker
    assert isinstance(worker, StubbornWorker)
    task_id = rig.place()
    rig.store.cancel(task_id, now=rig.clock())

    rig.upkeep.heartbeat()
    assert worker.cancels == [task_id] and worker.kills == []
    rig.clock.now = T0 + KILL_GRACE_SECONDS / 2
    rig.upkeep.heartbeat()
    assert worker.cancels == [task_id] and worker.kills == []  # one cancel, no kill yet
    assert rig.state(task_id) is TaskState.RUNNING

    rig.clock.now = T0 + KILL_GRACE_SECONDS + 0.5
    rig.upkeep.heartbeat()
    assert worker.kills == [task_id]
    task = rig.store.get(task_id)
    assert task is not None and task.state is TaskState.CANCELLED  # the client asked for it
    assert rig.running.get(task_id) is None


def test_kill_is_sent_only_once(make_rig: Callable[..., Rig]) -> None:
    """Without the kill ending the task (a worker restart may take time), later heartbeats
    must not kill again."""
    rig = make_rig(worker_factory=stubborn)
    worker = rig.slots[rig.uuids[0]].worker
    assert isinstance(worker, StubbornWorker)
    task_id = rig.place()
    rig.store.cancel(task_id, now=rig.clock())
    rig.upkeep.heartbeat()
    running = rig.running.get(task_id)
    assert running is not None
    running.killed = True  # as after a kill whose outcome has not arrived yet
    for step in range(1, 4):
        rig.clock.now = T0 + KILL_GRACE_SECONDS * 2 * step
        rig.upkeep.heartbeat()
    assert worker.kills == [] and worker.cancels == [task_id]


def test_a_task_past_its_timeout_is_stopped(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(task_timeout_seconds=100.0)
    task_id = rig.place()
    rig.clock.now = T0 + 99
    rig.upkeep.heartbeat()
    assert rig.running.get(task_id).cancel_sent_at is None  # type: ignore[union-attr]

    rig.clock.now = T0 + 101
    rig.upkeep.heartbeat()

    rig.wait_until(lambda: rig.state(task_id) not in (TaskState.RUNNING, None))
    task = rig.store.get(task_id)
    assert task is not None and task.state.is_final
    assert rig.running.get(task_id) is None
    assert rig.slots[rig.uuids[0]].ledger.running_tasks == 0


def test_a_task_past_its_timeout_that_ignores_the_cancel_is_killed(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(worker_factory=stubborn, task_timeout_seconds=100.0)
    worker = rig.slots[rig.uuids[0]].worker
    assert isinstance(worker, StubbornWorker)
    task_id = rig.place()
    rig.clock.now = T0 + 101
    rig.upkeep.heartbeat()
    assert worker.cancels == [task_id]
    rig.clock.now = T0 + 101 + KILL_GRACE_SECONDS + 1
    rig.upkeep.heartbeat()
    assert worker.kills == [task_id]
    assert rig.running.get(task_id) is None


def test_a_task_stopped_for_its_timeout_fails_with_a_timeout_error(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(task_timeout_seconds=100.0)
    task_id = rig.place()
    rig.clock.now = T0 + 101
    rig.upkeep.heartbeat()
    rig.wait_until(lambda: rig.state(task_id) is not TaskState.RUNNING)
    task = rig.store.get(task_id)
    assert task is not None
    assert task.state is not TaskState.CANCELLED
    assert task.error is not None and "timeout" in task.error


# --- recovery and pruning ---------------------------------------------------------------------
def claim_elsewhere(rig: Rig, task_id: str, *, lease: float = 60.0) -> None:
    """A claim by a node that then died: nothing renews its lease."""
    claimed = rig.store.claim(Claim(task_id, "node-dead", 0, "GPU-x", GIB, lease), now=T0)
    assert claimed is not None


def test_recover_requeues_an_expired_lease_and_wakes_the_scheduler(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    task_id = rig.submit("a")
    claim_elsewhere(rig, task_id)

    rig.clock.now = T0 + 59
    rig.upkeep.recover()
    assert rig.state(task_id) is TaskState.RUNNING and rig.wakes == []

    rig.clock.now = T0 + 61
    rig.upkeep.recover()
    task = rig.store.get(task_id)
    assert task is not None
    assert task.state is TaskState.QUEUED and task.lease_token is None and task.node is None
    assert rig.wakes == [None]
    assert (rig.audio_dir / "a.wav").exists()


def test_recover_fails_an_expired_lease_on_its_last_attempt(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    task_id = rig.submit("a", max_attempts=1)
    claim_elsewhere(rig, task_id)
    rig.clock.now = T0 + 61
    seen: list[str] = []
    with rig.finals.watch(task_id, lambda: seen.append(task_id)):
        rig.upkeep.recover()
    task = rig.store.get(task_id)
    assert task is not None and task.state is TaskState.FAILED
    assert seen == [task_id]  # its waiters are told


def test_prune_deletes_old_final_tasks_and_their_audio(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(retention_seconds=3600.0)
    old = rig.submit("old")
    recent = rig.submit("recent")
    queued = rig.submit("queued")
    rig.store.fail_queued(old, "never fits", now=T0)
    rig.store.cancel(recent, now=T0 + 3000)

    rig.clock.now = T0 + 3601
    rig.upkeep.prune()

    assert rig.store.get(old) is None
    assert rig.store.history(old) == []
    assert not (rig.audio_dir / "old.wav").exists()
    assert rig.state(recent) is TaskState.CANCELLED  # finished within the retention
    assert (rig.audio_dir / "recent.wav").exists()
    assert rig.state(queued) is TaskState.QUEUED  # never pruned, however old
    assert (rig.audio_dir / "queued.wav").exists()

    rig.clock.now = T0 + 3000 + 3601
    rig.upkeep.prune()
    assert rig.store.get(recent) is None
    assert not (rig.audio_dir / "recent.wav").exists()


def test_prune_tolerates_audio_already_deleted(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(retention_seconds=10.0)
    task_id = rig.submit("a")
    rig.store.cancel(task_id, now=T0)
    (rig.audio_dir / "a.wav").unlink()
    rig.clock.now = T0 + 11
    rig.upkeep.prune()
    assert rig.store.get(task_id) is None


# --- device watch -----------------------------------------------------------------------------
def device(rig: Rig, index: int) -> dict[str, str]:
    """The DCGM exporter's labels of simulated GPU `index` (the rig's node is node-a)."""
    uuid = rig.uuids[index]
    return {"gpu": str(index), "UUID": uuid, "device": f"sim{index}", "modelName": GPU_NAME,
            "Hostname": "node-a"}  # fmt: skip


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory warning")]


def test_watch_devices_warns_once_per_episode_of_high_memory(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(
        f"2x24GiB:{GPU_NAME}", memory_warning_fraction=0.5, memory_warning_clear_seconds=5.0
    )
    uuid, gpu0, gpu1 = rig.uuids[0], device(rig, 0), device(rig, 1)
    episodes = "gpuscribe_gpu_memory_warnings_total"
    used_high = {**gpu0, "condition": "used_high"}
    caplog.set_level(logging.INFO, logger="gpuscribe.node.upkeep")

    rig.upkeep.watch_devices()
    assert rig.counter(episodes, **used_high) == 0
    assert rig.counter("gpuscribe_gpu_memory_used_bytes", **gpu0) == REFERENCE_CONTEXT_BYTES
    assert rig.slots[uuid].memory_warning is None

    rig.gpus.set_foreign(uuid, 12 * GIB)  # context + 12 GiB: past half of 24 GiB
    rig.upkeep.watch_devices()
    assert rig.counter(episodes, **used_high) == 1
    assert rig.counter("gpuscribe_gpu_memory_warning", **gpu0) == 1
    assert rig.counter("gpuscribe_gpu_memory_warning", **gpu1) == 0
    assert rig.counter("gpuscribe_gpu_memory_foreign_bytes", **gpu0) == 12 * GIB
    warning = rig.slots[uuid].memory_warning
    assert warning is not None and warning.since == T0
    logged = warnings_logged(caplog)
    assert len(logged) == 1
    assert logged[0].startswith(f"memory warning on GPU 0 ({uuid}): memory use 13.2")
    assert "passed the warning level of 50%" in logged[0]
    used = rig.counter("gpuscribe_gpu_memory_utilization_ratio", **gpu0)
    assert used == pytest.approx((12 * GIB + REFERENCE_CONTEXT_BYTES) / (24 * GIB))

    for _ in range(3):  # still above: the same episode
        rig.upkeep.watch_devices()
    rig.gpus.set_foreign(uuid, 0)  # back below, but not yet for long
    rig.clock.now = T0 + 1
    rig.upkeep.watch_devices()
    rig.clock.now = T0 + 5.5
    rig.upkeep.watch_devices()
    assert rig.slots[uuid].memory_warning is not None
    assert len(warnings_logged(caplog)) == 1 and rig.counter(episodes, **used_high) == 1

    rig.clock.now = T0 + 6  # calm for 5 s: over
    rig.upkeep.watch_devices()
    assert rig.slots[uuid].memory_warning is None
    assert rig.counter("gpuscribe_gpu_memory_warning", **gpu0) == 0
    assert len(rig.wakes) == 1  # the scheduler is woken: tasks may go there again
    assert warnings_logged(caplog)[-1].endswith("is over: tasks are admitted there again")

    rig.gpus.set_foreign(uuid, 20 * GIB)  # a new episode warns again
    rig.upkeep.watch_devices()
    assert rig.counter(episodes, **used_high) == 2
    assert len([m for m in warnings_logged(caplog) if "no new task" in m]) == 2


def test_other_processes_growing_under_a_running_task_warn(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(memory_warning_foreign_growth_bytes=GIB)
    uuid = rig.uuids[0]
    rig.gpus.set_foreign(uuid, 2 * GIB)
    rig.place()
    rig.upkeep.watch_devices()
    rig.gpus.set_foreign(uuid, 3 * GIB)  # + 1 GiB: not more than allowed
    rig.upkeep.watch_devices()
    assert rig.slots[uuid].memory_warning is None
    rig.gpus.set_foreign(uuid, 3 * GIB + 1)
    rig.upkeep.watch_devices()
    warning = rig.slots[uuid].memory_warning
    assert warning is not None and warning.condition.value == "foreign_growth"
    labels = {**device(rig, 0), "condition": "foreign_growth"}
    assert rig.counter("gpuscribe_gpu_memory_warnings_total", **labels) == 1


def test_growth_is_not_judged_where_the_device_lists_none_of_the_workers_memory(
    make_rig: Callable[..., Rig],
) -> None:
    """The stubborn worker's pid holds nothing on the simulated GPU, as a worker whose process
    id the device does not know (another pid namespace): all its memory reads as foreign."""
    rig = make_rig(worker_factory=stubborn, memory_warning_foreign_growth_bytes=GIB)
    uuid = rig.uuids[0]
    rig.place()
    rig.upkeep.watch_devices()
    rig.gpus.set_foreign(uuid, 4 * GIB)
    rig.upkeep.watch_devices()
    assert rig.slots[uuid].memory_warning is None


def test_no_task_is_admitted_onto_a_warned_gpu_until_it_recovers(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(
        f"2x24GiB:{GPU_NAME}", memory_warning_fraction=0.5, memory_warning_clear_seconds=0.0
    )
    rig.gpus.set_foreign(rig.uuids[0], 12 * GIB)
    rig.gpus.set_foreign(rig.uuids[1], 12 * GIB)
    rig.upkeep.watch_devices()
    task_id = rig.submit("a")
    assert rig.scheduler.run_once() == 0
    task = rig.store.get(task_id)
    assert task is not None and task.state is TaskState.QUEUED
    assert task.wait_reason is not None
    assert task.wait_reason.startswith("GPU 0: memory warning, memory use 13.2")
    assert "; GPU 1: memory warning, " in task.wait_reason

    rig.gpus.set_foreign(rig.uuids[1], 0)  # GPU 1 recovers, GPU 0 does not
    rig.upkeep.watch_devices()
    assert rig.scheduler.run_once() == 1
    running = rig.running.get(task_id)
    assert running is not None and running.device_uuid == rig.uuids[1]


def test_a_warned_gpu_with_nothing_running_unloads_its_idle_models_once(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """Its warning keeps new tasks away, and only a new task's admission would evict idle
    models: were they what keeps used memory high, the episode could never end."""
    caplog.set_level(logging.INFO, logger="gpuscribe.node.upkeep")
    rig = make_rig(worker_factory=stubborn, memory_warning_fraction=0.5)
    slot = rig.slots[rig.uuids[0]]
    worker = slot.worker
    assert isinstance(worker, StubbornWorker)
    task_id = rig.place()
    (model,) = [m.model for m in slot.ledger.snapshot().models]
    slot.ledger.set_weights(model, GIB)  # the worker reported it loaded
    rig.gpus.set_foreign(rig.uuids[0], 13 * GIB)  # past half of 24 GiB
    rig.upkeep.watch_devices()
    assert slot.memory_warning is not None
    assert worker.unloads == []  # its task still runs on it
    slot.ledger.release(task_id)  # the task ended: the model stays, idle
    rig.upkeep.watch_devices()
    rig.upkeep.watch_devices()
    assert worker.unloads == [model]  # once in the episode, not at every look
    assert "unloading its idle models tiny.en" in caplog.text


def test_watch_devices_publishes_the_ledger_figures(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.place()
    rig.upkeep.watch_devices()
    labels = device(rig, 0)
    ledger = rig.slots[rig.uuids[0]].ledger
    assert rig.counter("gpuscribe_gpu_memory_reserved_bytes", **labels) == ledger.admitted_bytes
    assert rig.counter("gpuscribe_gpu_memory_cap_bytes", **labels) == int(24 * GIB * 0.9)
    assert rig.counter("gpuscribe_gpu_tasks_running", **labels) == 1


def test_watch_devices_logs_a_lost_device_and_keeps_its_fresh_reading(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    uuid = rig.uuids[0]
    rig.gpus.lose(uuid)
    rig.upkeep.watch_devices()
    assert not rig.slots[uuid].reading.healthy
    assert f"device {uuid} is unhealthy" in caplog.text
