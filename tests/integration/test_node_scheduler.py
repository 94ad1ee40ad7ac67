"""node.scheduler: one scheduling pass with its I/O, over a real store, simulated GPUs and their
simulated workers (started, so that they report ready and run what they are given). Tasks are
long (an hour of audio at real speed) so that what a pass placed is still running when the test
looks; the workers are stopped at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gpuscribe.config import Settings, load_settings
from gpuscribe.domain import NewTask, Priority, Task, TaskState, TranscriptionOptions
from gpuscribe.memory.estimator import Estimator
from gpuscribe.memory.ledger import DeviceLedger
from gpuscribe.memory.profiles import REFERENCE_CONTEXT_BYTES
from gpuscribe.memory.types import GIB, MemoryEstimate, ModelKey, ProfileKey
from gpuscribe.metrics import Metrics
from gpuscribe.node.context import NodeContext
from gpuscribe.node.devices import DeviceSlot
from gpuscribe.node.events import EventHandler, local_failure_error
from gpuscribe.node.oom_floors import OomFloors
from gpuscribe.node.parts import build_parts
from gpuscribe.node.running import RunningTasks
from gpuscribe.node.scheduler import LOCAL_FAILURE_AVOID_SECONDS, SchedulerPass
from gpuscribe.store.audio import LocalAudioStore
from gpuscribe.store.base import Claim, NodeRecord, TaskStore
from gpuscribe.store.memory import InMemoryStore
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.telemetry.simulated import SimulatedGpus
from gpuscribe.workers.messages import DeviceRef, ModelLoaded, RunTask
from support.clock import Clock

T0 = 1_000_000.0
GPU_NAME = "NVIDIA H200"
TINY = TranscriptionOptions(model="tiny.en", engine="transformers", compute_type="float16")
LARGE = TranscriptionOptions(model="large-v3", engine="transformers", compute_type="float16")
LONG_AUDIO = 3600.0  # at simulation_speed 1 a task runs for an hour: it is running when we look


@dataclass
class Rig:
    settings: Settings
    store: TaskStore
    gpus: SimulatedGpus
    slots: dict[str, DeviceSlot]
    running: RunningTasks
    estimator: Estimator
    metrics: Metrics
    clock: Clock
    handler: EventHandler
    context: NodeContext
    audio_dir: Path

    @property
    def uuids(self) -> list[str]:
        return list(self.slots)

    def ledger(self, index: int) -> DeviceLedger:
        return self.slots[self.uuids[index]].ledger

    def start_workers(self) -> None:
        for slot in self.slots.values():
            slot.worker.start()  # reports WorkerReady: the slot becomes ready, context charged
        assert all(slot.ready for slot in self.slots.values())

    @property
    def oom_floors(self) -> OomFloors:
        return self.context.oom_floors

    def scheduler(self, oom_floors: OomFloors | None = None, **shared: Any) -> SchedulerPass:
        context = replace(
            self.context, audio=LocalAudioStore(self.audio_dir),
            oom_floors=self.oom_floors if oom_floors is None else oom_floors, **shared,
        )  # fmt: skip
        return SchedulerPass(context, self.estimator)

    def submit(
        self, name: str, options: TranscriptionOptions = TINY, seconds: float = LONG_AUDIO
    ) -> str:
        audio = self.audio_dir / f"{name}.wav"
        audio.write_bytes(b"RIFF")
        task, _ = self.store.add(
            NewTask(Priority.NORMAL, options, str(audio), seconds, "wav"), now=self.clock()
        )
        self.clock.now += 0.001  # distinct submission times keep the order plain
        return task.id

    def estimate(
        self, options: TranscriptionOptions = TINY, seconds: float = LONG_AUDIO
    ) -> MemoryEstimate:
        slot = next(iter(self.slots.values()))
        o = options
        key = ProfileKey(
            slot.device.name, o.engine, o.model, o.compute_type, o.batch_size, o.beam_size
        )
        return self.estimator.estimate(key, seconds, device_kind=slot.kind)

    def counter(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def build_rig(tmp_path: Path, spec: str, **flags: Any) -> Rig:
    settings = load_settings(
        flags={"data_dir": str(tmp_path), "node_name": "node-a", "simulation_speed": 1.0, **flags},
        env={},
    )
    gpus = SimulatedGpus(spec)
    clock = Clock(T0)
    parts = build_parts(settings, InMemoryStore(), gpus, clock=clock, wake=lambda: None)
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    return Rig(
        settings, parts.context.store, gpus, dict(parts.context.slots), parts.context.running,
        parts.estimator, parts.context.metrics, clock, parts.events, parts.context, audio_dir,
    )  # fmt: skip


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(spec: str = f"2x24GiB:{GPU_NAME}", **flags: Any) -> Rig:
        rig = build_rig(tmp_path, spec, **flags)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for slot in rig.slots.values():
            slot.worker.stop(timeout=2.0)
        rig.store.close()


def tiny_total(rig: Rig) -> int:
    return rig.estimate().total_bytes


# --- placing ----------------------------------------------------------------------------------
def test_a_pass_claims_a_task_on_the_least_loaded_gpu(make_rig: Any) -> None:
    rig = make_rig()
    rig.start_workers()
    # GPU 0 holds an idle model: more admitted there, so GPU 1 (higher index) is least loaded.
    other = ModelKey("transformers", "base", "float16")
    rig.handler.handle(rig.uuids[0], ModelLoaded(rig.uuids[0], other, 2 * GIB, 0.1))
    assert rig.ledger(0).admitted_bytes > rig.ledger(1).admitted_bytes
    task_id = rig.submit("a")

    assert rig.scheduler().run_once() == 1

    task = rig.store.get(task_id)
    estimate = rig.estimate()
    assert task is not None
    assert task.state is TaskState.RUNNING
    assert task.gpu_uuid == rig.uuids[1] and task.gpu_index == 1
    assert task.node == "node-a"
    assert task.memory_estimate_bytes == estimate.total_bytes
    assert task.lease_expires_at == T0 + 0.001 + rig.settings.lease_seconds
    assert task.attempts == 1
    running = rig.running.get(task_id)
    assert running is not None
    assert running.token == task.lease_token and running.device_uuid == rig.uuids[1]
    assert running.estimate == estimate
    assert rig.ledger(1).running_tasks == 1 and rig.ledger(0).running_tasks == 0
    assert rig.counter("gpuscribe_scheduling_total", outcome="placed") == 1


def test_tasks_of_one_pass_spread_over_the_gpus(make_rig: Any) -> None:
    rig = make_rig()
    rig.start_workers()
    ids = [rig.submit(name) for name in "abc"]
    assert rig.scheduler().run_once() == 3
    placed = [rig.store.get(i).gpu_index for i in ids]  # type: ignore[union-attr]
    assert placed == [0, 1, 0]  # least admitted first, ties to the lowest index
    assert [rig.ledger(i).running_tasks for i in (0, 1)] == [2, 1]


def test_an_empty_queue_does_nothing(make_rig: Any) -> None:
    rig = make_rig()
    rig.start_workers()
    assert rig.scheduler().run_once() == 0
    assert rig.counter("gpuscribe_scheduling_total", outcome="waiting") == 0


def test_a_task_that_fits_no_gpu_even_empty_fails_at_once_naming_the_cap(make_rig: Any) -> None:
    rig = make_rig(f"2x4GiB:{GPU_NAME}")  # limit: min(90% of 4 GiB, 4 GiB - 1 GiB) = 3 GiB
    rig.start_workers()
    big = rig.submit("big", LARGE, 30.0)
    small = rig.submit("small", TINY, 30.0)
    assert rig.estimate(LARGE, 30.0).total_bytes > 3 * GIB

    assert rig.scheduler().run_once() == 1

    task = rig.store.get(big)
    assert task is not None
    assert task.state is TaskState.FAILED
    assert task.attempts == 0  # never claimed
    assert task.error is not None
    assert "cap of 3.0 GiB" in task.error
    assert task.error.startswith("needs ")
    assert rig.running.get(big) is None
    charged = {c.task_id for i in (0, 1) for c in rig.ledger(i).snapshot().tasks}
    assert big not in charged
    assert rig.store.get(small).state is TaskState.RUNNING  # type: ignore[union-attr]
    assert rig.counter("gpuscribe_scheduling_total", outcome="rejected") == 1


def test_the_audio_of_an_impossible_task_is_deleted(make_rig: Any) -> None:
    rig = make_rig(f"1x4GiB:{GPU_NAME}")
    rig.start_workers()
    big = rig.submit("big", LARGE, 30.0)
    rig.scheduler().run_once()
    assert rig.store.get(big).state is TaskState.FAILED  # type: ignore[union-attr]
    assert not (rig.audio_dir / "big.wav").exists()


def test_an_impossible_task_is_signalled_final_to_its_watchers(make_rig: Any) -> None:
    rig = make_rig(f"1x4GiB:{GPU_NAME}")
    rig.start_workers()
    big = rig.submit("big", LARGE, 30.0)
    seen: list[str] = []
    with rig.context.finals.watch(big, lambda: seen.append(big)):
        rig.scheduler().run_once()
    assert seen == [big]


# --- waiting ----------------------------------------------------------------------------------
def test_tasks_wait_with_a_reason_while_no_worker_is_ready(make_rig: Any) -> None:
    rig = make_rig()
    task_id = rig.submit("a")
    assert rig.scheduler().run_once() == 0
    task = rig.store.get(task_id)
    assert task is not None and task.state is TaskState.QUEUED
    assert task.wait_reason == "no device is ready yet (workers starting)"


def test_max_tasks_per_gpu_is_respected_and_the_rest_wait_with_a_reason(make_rig: Any) -> None:
    rig = make_rig(max_tasks_per_gpu=2)
    rig.start_workers()
    ids = [rig.submit(name) for name in "abcde"]
    scheduler = rig.scheduler()

    assert scheduler.run_once() == 4

    assert [rig.ledger(i).running_tasks for i in (0, 1)] == [2, 2]
    states = [rig.store.get(i).state for i in ids]  # type: ignore[union-attr]
    assert states == [TaskState.RUNNING] * 4 + [TaskState.QUEUED]
    waiting = rig.store.get(ids[4])
    assert waiting is not None
    assert waiting.wait_reason == "GPU 0: 2 of 2 tasks running; GPU 1: 2 of 2 tasks running"
    assert rig.counter("gpuscribe_scheduling_total", outcome="waiting") == 1

    # Another pass changes nothing: still four running, the fifth still waits for the same reason.
    assert scheduler.run_once() == 0
    assert len(rig.running) == 4
    assert rig.store.get(ids[4]).wait_reason == waiting.wait_reason  # type: ignore[union-attr]


def test_a_task_waits_for_memory_and_its_reason_says_so(make_rig: Any) -> None:
    rig = make_rig(f"1x8GiB:{GPU_NAME}")  # limit 7 GiB: one large-v3 task fits, two do not
    rig.start_workers()
    first = rig.submit("a", LARGE)
    second = rig.submit("b", LARGE)
    assert rig.scheduler().run_once() == 1
    assert rig.store.get(first).state is TaskState.RUNNING  # type: ignore[union-attr]
    waiting = rig.store.get(second)
    assert waiting is not None and waiting.state is TaskState.QUEUED
    assert waiting.wait_reason is not None
    assert waiting.wait_reason.startswith("GPU 0: needs ")
    assert "available under the 90% cap" in waiting.wait_reason


def test_foreign_memory_read_fresh_keeps_a_task_waiting(make_rig: Any) -> None:
    rig = make_rig(f"1x24GiB:{GPU_NAME}")
    rig.start_workers()
    rig.gpus.set_foreign(rig.uuids[0], 20 * GIB)  # another process took most of the GPU
    task_id = rig.submit("a", LARGE)
    assert rig.scheduler().run_once() == 0
    task = rig.store.get(task_id)
    assert task is not None and task.state is TaskState.QUEUED
    assert "other processes hold 20.0 GiB" in (task.wait_reason or "")

    rig.gpus.set_foreign(rig.uuids[0], 0)
    assert rig.scheduler().run_once() == 1


# --- claims -----------------------------------------------------------------------------------
class CancelWhenEstimated(OomFloors):
    """The planner looks up each task's out-of-memory floor while it estimates the task: after
    the pass read the queue and before it claims. Cancelling there is a client's cancel landing
    exactly between the read and the claim. (Real floors otherwise: nothing of gpuscribe's own
    is replaced.)"""

    def __init__(self, store: TaskStore, clock: Clock) -> None:
        super().__init__()
        self._store = store
        self._clock = clock

    def get(self, task_id: str) -> int:
        self._store.cancel(task_id, now=self._clock())
        return super().get(task_id)


def test_a_claim_that_fails_charges_nothing(make_rig: Any) -> None:
    rig = make_rig(f"1x24GiB:{GPU_NAME}")
    rig.start_workers()
    ledger = rig.ledger(0)
    context_only = ledger.admitted_bytes
    task_id = rig.submit("a")

    scheduler = rig.scheduler(oom_floors=CancelWhenEstimated(rig.store, rig.clock))
    assert scheduler.run_once() == 0

    task = rig.store.get(task_id)
    assert task is not None and task.state is TaskState.CANCELLED
    assert rig.running.get(task_id) is None
    snap = ledger.snapshot()
    # the plan charged a copy: the real ledger never saw the task nor its model
    assert snap.tasks == () and snap.tasks_running == 0 and snap.models == ()
    assert ledger.admitted_bytes == context_only
    assert rig.counter("gpuscribe_scheduling_total", outcome="placed") == 0


class MeasureWhenEstimated(OomFloors):
    """Like CancelWhenEstimated, but what lands between the plan and the claim is a measurement
    that fills the device: its worker measured a context far above the estimate."""

    def __init__(self, ledger: DeviceLedger) -> None:
        super().__init__()
        self._ledger = ledger

    def get(self, task_id: str) -> int:
        self._ledger.charge_context(self._ledger.limit_bytes)
        return super().get(task_id)


def test_a_claimed_task_the_ledger_then_refuses_goes_back_to_the_queue(make_rig: Any) -> None:
    """The plan charged a copy of the ledger; the real one is charged after the claim. When a
    measurement filled it in between, the claim is given back: the task is queued again with
    its attempt unused, no failure recorded, and any node may claim it at once."""
    rig = make_rig(f"1x24GiB:{GPU_NAME}")
    rig.start_workers()
    task_id = rig.submit("a")

    assert rig.scheduler(oom_floors=MeasureWhenEstimated(rig.ledger(0))).run_once() == 0

    task = rig.store.get(task_id)
    assert task is not None and task.state is TaskState.QUEUED and task.attempts == 0
    assert task.error is None and task.lease_token is None and task.node is None
    assert task.wait_reason is not None and "changed since the plan" in task.wait_reason
    assert rig.running.get(task_id) is None
    assert rig.ledger(0).snapshot().tasks == ()
    assert rig.counter("gpuscribe_scheduling_total", outcome="placed") == 0
    assert [t.id for t in rig.store.queued(now=rig.clock(), limit=10)] == [task_id]
    again = rig.store.claim(
        Claim(task_id, "node-b", 0, "GPU-b0", 1, rig.settings.lease_seconds), now=rig.clock()
    )
    assert again is not None and again.attempts == 1


class CancelledOnceClaimed(InMemoryStore):
    """A client's cancel landing just after the pass claimed its tasks, before it charges them
    (a real store; only the moment of the cancel is chosen)."""

    def claim_window(self, **kwargs: Any) -> tuple[list[Task], list[Task]]:
        window, claimed = super().claim_window(**kwargs)
        for task in claimed:
            self.cancel(task.id, now=kwargs["now"])
        return window, claimed


def test_a_claim_given_back_after_a_cancel_ends_the_task_and_deletes_its_audio(
    make_rig: Any,
) -> None:
    """A cancel of a claimed task is a flag; when the claim is then given back, the store
    cancels the task for good: its audio goes as any cancelled task's does."""
    rig = make_rig(f"1x24GiB:{GPU_NAME}")
    rig.start_workers()
    store = CancelledOnceClaimed()
    audio = rig.audio_dir / "a.wav"
    audio.write_bytes(b"RIFF")
    task, _ = store.add(NewTask(Priority.NORMAL, TINY, str(audio), LONG_AUDIO, "wav"), now=T0)
    scheduler = rig.scheduler(oom_floors=MeasureWhenEstimated(rig.ledger(0)), store=store)

    assert scheduler.run_once() == 0

    final = store.get(task.id)
    assert final is not None and final.state is TaskState.CANCELLED and final.attempts == 0
    assert not audio.exists()
    assert rig.running.get(task.id) is None and rig.ledger(0).snapshot().tasks == ()
    assert final.wait_reason is None


def test_a_retry_after_out_of_memory_is_claimed_with_the_raised_working_floor(
    make_rig: Any,
) -> None:
    rig = make_rig(f"1x24GiB:{GPU_NAME}")
    rig.start_workers()
    task_id = rig.submit("a")
    # a first attempt, claimed and sent back to the queue (as an out-of-memory does)
    first = rig.store.claim(
        Claim(task_id, "node-a", 0, rig.uuids[0], 1, rig.settings.lease_seconds), now=rig.clock()
    )
    assert first is not None and first.lease_token is not None
    rig.store.fail(task_id, first.lease_token, "OOM", retry_at=rig.clock(), now=rig.clock())
    rig.oom_floors.raise_to(task_id, 6 * GIB)

    assert rig.scheduler().run_once() == 1

    estimate = rig.estimate()
    task = rig.store.get(task_id)
    assert task is not None and task.state is TaskState.RUNNING and task.attempts == 2
    assert task.memory_estimate_bytes == estimate.context_bytes + estimate.weights_bytes + 6 * GIB
    assert rig.ledger(0).snapshot().tasks[0].working_bytes == 6 * GIB


def test_a_claimed_task_is_dispatched_to_its_worker(make_rig: Any) -> None:
    rig = make_rig(f"1x24GiB:{GPU_NAME}")
    rig.start_workers()
    task_id = rig.submit("a")
    uuid = rig.uuids[0]
    pid = next(iter(rig.slots[uuid].worker.pids()))
    assert rig.gpus.held_by(uuid, pid) == REFERENCE_CONTEXT_BYTES  # the worker's context only
    rig.scheduler().run_once()
    # the simulated worker loads the model and holds the task's working memory
    deadline = time.monotonic() + 5.0
    while rig.gpus.held_by(uuid, pid) == REFERENCE_CONTEXT_BYTES:
        assert time.monotonic() < deadline, "the worker never started the task"
        time.sleep(0.01)
    assert rig.running.get(task_id) is not None


# --- tasks another node gave back -------------------------------------------------------------
def test_a_task_this_node_gave_back_is_left_to_other_nodes_for_a_while(make_rig: Any) -> None:
    rig = make_rig()
    rig.start_workers()
    task_id = rig.submit("a")
    assert rig.scheduler().run_once() == 1
    task = rig.store.get(task_id)
    assert task is not None and task.lease_token is not None
    error = local_failure_error("node-a", "AudioUnavailable: not on this node")
    rig.running.pop(task_id, task.lease_token)
    rig.ledger(task.gpu_index or 0).release(task_id)
    assert rig.store.fail(task_id, task.lease_token, error, retry_at=rig.clock(), now=rig.clock())

    assert rig.scheduler().run_once() == 0  # node-a leaves it to the others
    other = replace(rig.settings, node_name="node-b")
    assert rig.scheduler(OomFloors(), settings=other).run_once() == 1
    again = rig.store.get(task_id)
    assert again is not None and again.node == "node-b" and again.attempts == 2


def test_after_a_while_the_node_that_gave_a_task_back_tries_it_again(make_rig: Any) -> None:
    rig = make_rig()
    rig.start_workers()
    task_id = rig.submit("a")
    assert rig.scheduler().run_once() == 1
    task = rig.store.get(task_id)
    assert task is not None and task.lease_token is not None
    rig.running.pop(task_id, task.lease_token)
    rig.ledger(task.gpu_index or 0).release(task_id)
    error = local_failure_error("node-a", "ModelUnavailable: no weights")
    rig.store.fail(task_id, task.lease_token, error, retry_at=rig.clock(), now=rig.clock())
    assert rig.scheduler().run_once() == 0
    rig.clock.now += LOCAL_FAILURE_AVOID_SECONDS + 0.1  # no other node took it meanwhile
    assert rig.scheduler().run_once() == 1


# --- too large here, not in the cluster --------------------------------------------------------
def gpu_record(node: str, gib: int, at: float) -> NodeRecord:
    device = {
        "index": 0, "uuid": f"GPU-{node}", "name": GPU_NAME, "kind": "simulated",
        "memory_total_bytes": gib * GIB, "memory_used_bytes": 0, "memory_free_bytes": gib * GIB,
        "memory_cap_bytes": int(gib * GIB * 0.9), "healthy": True,
    }  # fmt: skip
    return NodeRecord(node, "worker", at, at, at + 60.0, (device,))


def test_a_task_too_large_here_waits_for_a_live_node_that_can_hold_it(make_rig: Any) -> None:
    rig = make_rig(f"2x4GiB:{GPU_NAME}")
    rig.start_workers()
    rig.store.heartbeat_node(gpu_record("node-big", 80, rig.clock()))
    big = rig.submit("big", LARGE, 30.0)
    assert rig.scheduler().run_once() == 0
    task = rig.store.get(big)
    assert task is not None and task.state is TaskState.QUEUED
    assert task.wait_reason == (
        f"too large for this node's devices; node node-big ({GPU_NAME}) can hold it"
    )
    assert (rig.audio_dir / "big.wav").exists()


def test_a_task_too_large_for_every_live_node_fails_naming_the_largest_cap(
    make_rig: Any,
) -> None:
    rig = make_rig(f"2x4GiB:{GPU_NAME}")
    rig.start_workers()
    rig.store.heartbeat_node(gpu_record("node-6", 6, rig.clock()))
    rig.store.heartbeat_node(gpu_record("node-gone", 80, rig.clock() - 120.0))  # lease ended
    big = rig.submit("big", LARGE, 30.0)
    rig.scheduler().run_once()
    task = rig.store.get(big)
    assert task is not None and task.state is TaskState.FAILED and task.error is not None
    assert task.error.endswith(
        f"the largest cap in the cluster is 5.0 GiB ({GPU_NAME} on node node-6)"
    ), task.error


# --- a batched model on a real GPU ------------------------------------------------------------
class RecordingWorker:
    """A worker that records what it is given and runs nothing."""

    def __init__(self, device: DeviceRef) -> None:
        self.device = device
        self.commands: list[RunTask] = []

    def start(self) -> None: ...

    def run(self, command: RunTask) -> None:
        self.commands.append(command)

    def cancel(self, task_id: str) -> None: ...

    def unload(self, model: ModelKey) -> None: ...

    def kill_task(self, task_id: str) -> None: ...

    def alive(self) -> bool:
        return True

    def pids(self) -> set[int]:
        return set()

    def stop(self, timeout: float = 10.0) -> None: ...


def test_a_batched_model_is_charged_its_batch_once_and_its_tasks_name_its_rows(
    make_rig: Any,
) -> None:
    """The transformers engine on a CUDA GPU: the ledger charges the model's batch (rows from
    the GPU's memory) once with its weights, each task a small working figure; every RunTask
    names the rows charged and its task's priority."""
    rig = make_rig(f"1x141GiB:{GPU_NAME}")
    slot = next(iter(rig.slots.values()))
    slot.device = replace(slot.device, kind=DeviceKind.CUDA)
    worker = RecordingWorker(slot.device)
    slot.worker = worker
    slot.ready = True
    ids = []
    for priority in (Priority.LOW, Priority.URGENT, Priority.NORMAL):
        audio = rig.audio_dir / f"{priority.label}.wav"
        audio.write_bytes(b"RIFF")
        task, _ = rig.store.add(
            NewTask(priority, LARGE, str(audio), LONG_AUDIO, "wav"), now=rig.clock()
        )
        ids.append(task.id)
        rig.clock.now += 0.001
    assert rig.scheduler().run_once() == 3
    key = ProfileKey(GPU_NAME, "transformers", "large-v3", "float16", 1, 5)
    est = rig.estimator.estimate(
        key, LONG_AUDIO, device_kind=DeviceKind.CUDA, total_bytes=slot.ledger.total_bytes,
        word_timestamps=LARGE.word_timestamps,  # the scheduler passes the task's
    )  # fmt: skip
    assert est.batch_rows == 256 and est.batch_bytes > 70 * GIB
    assert [c.batch_rows for c in worker.commands] == [256, 256, 256]
    assert [c.priority for c in worker.commands] == [
        int(Priority.URGENT),
        int(Priority.NORMAL),
        int(Priority.LOW),
    ]
    snap = slot.ledger.snapshot()
    assert [(m.batch_rows, m.batch_bytes) for m in snap.models] == [(256, est.batch_bytes)]
    assert slot.ledger.admitted_bytes == (
        est.context_bytes + est.weights_bytes + est.batch_bytes + 3 * est.working_bytes
    )
    assert slot.ledger.admitted_bytes <= slot.ledger.cap_bytes
    # the worker measured the weights: the batch keeps its charge
    rig.handler.handle(slot.uuid, ModelLoaded(slot.uuid, ModelKey(
        "transformers", "large-v3", "float16"), 3 * GIB, 1.0))  # fmt: skip
    assert slot.ledger.snapshot().models[0].batch_bytes == est.batch_bytes
