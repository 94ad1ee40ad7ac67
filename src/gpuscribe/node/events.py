"""What a node does with each event its workers send: store the outcome, free the ledger, learn,
and tell the task's waiters (`FinalTasks`) once it is final.

Every store update names the lease token; an event for a lease this node no longer holds
changes nothing.
"""

from __future__ import annotations

import logging
import random

from gpuscribe.domain import Task
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.types import GIB, CalibrationSample
from gpuscribe.node.context import NodeContext
from gpuscribe.node.devices import DeviceSlot
from gpuscribe.node.running import RunningTask
from gpuscribe.scheduling.backoff import retry_delay
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.messages import (
    FailureKind,
    ModelLoaded,
    ModelUnloaded,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    WorkerEvent,
    WorkerReady,
)

log = logging.getLogger(__name__)

OOM_RAISE_FACTOR = 1.5


def local_failure_error(node: str, error: str) -> str:
    """The error a task keeps when `node` could not run it for a reason of its own."""
    return f"node {node} could not run it: {error}"


class EventHandler:
    def __init__(self, context: NodeContext, book: CalibrationBook) -> None:
        self._ctx = context  # the collaborators this part shares with the node's others
        self._book = book
        self._rng = random.Random()

    def handle(self, device_uuid: str, event: WorkerEvent) -> None:
        try:
            self._dispatch(device_uuid, event)
        except Exception:
            log.exception("failed to handle %s from device %s", type(event).__name__, device_uuid)

    def _dispatch(self, device_uuid: str, event: WorkerEvent) -> None:
        slot = self._ctx.slots[device_uuid]
        if isinstance(event, WorkerReady):
            self._on_ready(slot, event)
        elif isinstance(event, ModelLoaded):
            slot.ledger.set_weights(event.model, event.weights_bytes)
            self._ctx.metrics.model_load_seconds.labels(
                event.model.model, event.model.engine
            ).observe(event.load_seconds)
        elif isinstance(event, ModelUnloaded):
            slot.ledger.evict(event.model)
        elif isinstance(event, TaskStarted):
            log.debug("task %s started on %s", event.task_id, device_uuid)
            self._observe_start(event)
        elif isinstance(event, TaskProgress):
            # Kept for the next flush (one transaction per node per second for all its tasks),
            # not written per report: 5,000 running tasks would write 20,000 commits/s.
            task = self._ctx.running.get(event.task_id)
            if task is not None and task.token == event.lease_token:
                task.progress = event.progress
        elif isinstance(event, TaskCompleted):
            self._on_completed(slot, event)
        elif isinstance(event, TaskFailed):
            self._on_failed(slot, event)

    def _on_ready(self, slot: DeviceSlot, event: WorkerReady) -> None:
        slot.ledger.reset()
        slot.ledger.charge_context(event.context_bytes)
        slot.ready = True
        log.info(
            "worker for %s (%s) ready: pid %d, context %.2f GiB",
            slot.device.name,
            slot.uuid,
            event.pid,
            event.context_bytes / GIB,
        )
        self._ctx.wake()

    def _on_completed(self, slot: DeviceSlot, event: TaskCompleted) -> None:
        task = self._ctx.running.pop(event.task_id, event.lease_token)
        if task is not None:  # a stale event must not free a newer attempt's charge
            slot.ledger.release(event.task_id)
        now = self._ctx.clock()
        stored = self._ctx.store.complete(
            event.task_id,
            event.lease_token,
            event.transcript,
            peak_bytes=event.peak_bytes,
            now=now,
        )
        self._ctx.wake()
        if stored:
            self._ctx.finals.signal(event.task_id)
        if not stored or task is None:
            log.warning("task %s completed under a lease it no longer holds", event.task_id)
            return
        self._ctx.oom_floors.forget(event.task_id)
        self._learn(task, event, now, cpu=slot.kind is DeviceKind.CPU)
        self._observe_finish(task, "completed", now)
        self._delete_audio(event.task_id)

    def _learn(self, task: RunningTask, event: TaskCompleted, now: float, *, cpu: bool) -> None:
        """A task that ran alone gives a clean measurement of its working memory. On the CPU
        the peak is the worker's whole resident memory: what it held before the task beyond
        the model's weights (the interpreter, the engine's libraries) is measured as its
        context, so that context + weights + working covers the peak."""
        if event.working_bytes is None or event.working_bytes <= 0 or not event.ran_alone:
            return
        context = None
        if cpu and event.peak_bytes is not None:
            baseline = event.peak_bytes - event.working_bytes
            context = max(0, baseline - task.estimate.weights_bytes)
        sample = CalibrationSample(
            key=task.key,
            working_bytes=event.working_bytes,
            weights_bytes=None,
            context_bytes=context,
            measured_at=now,
            estimate_bytes=task.estimate.working_bytes,
        )
        self._ctx.store.add_sample(sample)
        self._book.add(sample)
        self._ctx.metrics.estimation_error_ratio.labels(task.key.model).observe(
            task.estimate.working_bytes / event.working_bytes
        )

    def _on_failed(self, slot: DeviceSlot, event: TaskFailed) -> None:
        task = self._ctx.running.pop(event.task_id, event.lease_token)
        self._ctx.wake()
        if task is None:
            log.warning("task %s failed under a lease it no longer holds", event.task_id)
            return
        slot.ledger.release(event.task_id)
        now = self._ctx.clock()
        if task.stop_reason == "timeout":
            event = self._timed_out(event)
        elif event.kind is FailureKind.TRANSIENT and not slot.reading.healthy:
            event = self._device_lost(slot, event)
        current = self._ctx.store.get(event.task_id)
        if event.kind is FailureKind.CANCELLED or (
            current is not None and current.cancel_requested
        ):
            self._ctx.store.finish_cancel(event.task_id, event.lease_token, now=now)
            self._ctx.oom_floors.forget(event.task_id)
            self._ctx.finals.signal(event.task_id)
            self._observe_finish(task, "cancelled", now)
            self._delete_audio(event.task_id)
            return
        retry_at = self._retry_at(
            slot, task, event, now, attempts=current.attempts if current else 1
        )
        error = event.error
        if event.kind is FailureKind.NODE_LOCAL:
            error = local_failure_error(self._ctx.settings.node_name, error)
            log.warning("task %s goes back to the queue for another node: %s", task.task_id, error)
        outcome = self._ctx.store.fail(
            event.task_id, event.lease_token, error, retry_at=retry_at, now=now
        )
        stale = outcome is None
        if stale:  # the lease moved on meanwhile: the task is what the store says
            outcome = self._ctx.store.get(event.task_id)
        if outcome is not None and outcome.state.is_final:
            self._ctx.oom_floors.forget(event.task_id)
            self._ctx.finals.signal(event.task_id)
            self._observe_finish(task, "failed", now)
            self._delete_audio(event.task_id, outcome)
        elif stale:
            log.info("task %s failed under a lease that moved on: no retry of ours", task.task_id)
        else:
            self._ctx.metrics.retries.labels(event.kind.value).inc()
            log.info("task %s will retry (%s): %s", event.task_id, event.kind.value, event.error)

    def _timed_out(self, event: TaskFailed) -> TaskFailed:
        """A task this node stopped for its timeout failed, whatever the worker called it."""
        limit = self._ctx.settings.task_timeout_seconds
        return TaskFailed(
            event.task_id, event.lease_token, FailureKind.TIMEOUT,
            f"the task ran past its timeout of {limit:g} s and was stopped", event.peak_bytes,
        )  # fmt: skip

    def _device_lost(self, slot: DeviceSlot, event: TaskFailed) -> TaskFailed:
        """A task that failed on a device this node now reads as unhealthy (a GPU it lost) is
        this node's problem, not the task's: another node may run it at once."""
        error = f"GPU {slot.device.index} ({slot.uuid}) is unhealthy ({slot.reading.error}): "
        return TaskFailed(
            event.task_id, event.lease_token, FailureKind.NODE_LOCAL, error + event.error,
            event.peak_bytes,
        )  # fmt: skip

    def _retry_at(
        self, slot: DeviceSlot, task: RunningTask, event: TaskFailed, now: float, *, attempts: int
    ) -> float | None:
        if event.kind in (FailureKind.BAD_INPUT, FailureKind.TIMEOUT):
            return None  # bad input fails again; a task that ran out of time would again
        if event.kind is FailureKind.NODE_LOCAL:
            return now  # another node may run it now; this one leaves it alone for a while
        if event.kind is FailureKind.OUT_OF_MEMORY:
            self._ctx.metrics.out_of_memory.labels(
                *slot.metric_labels(self._ctx.settings.node_name)
            ).inc()
            floor = int(task.estimate.working_bytes * OOM_RAISE_FACTOR)
            self._ctx.oom_floors.raise_to(event.task_id, floor)
            log.warning(
                "task %s ran out of memory on %s; retrying with %.2f GiB working memory",
                event.task_id,
                slot.uuid,
                floor / GIB,
            )
            return now
        delay = retry_delay(
            attempts,
            base_seconds=self._ctx.settings.retry_base_seconds,
            max_seconds=self._ctx.settings.retry_max_seconds,
            rng=self._rng,
        )
        return now + delay

    def _observe_start(self, event: TaskStarted) -> None:
        """The time the task waited in the queue, from its submission to its dispatch."""
        task = self._ctx.running.get(event.task_id)
        if task is None or task.token != event.lease_token:
            return
        self._ctx.metrics.queue_wait_seconds.labels(task.key.model, task.priority.label).observe(
            max(0.0, task.started_at - task.created_at)
        )

    def _observe_finish(self, task: RunningTask, outcome: str, now: float) -> None:
        run_seconds = max(0.0, now - task.started_at)
        self._ctx.metrics.task_latency_seconds.labels(outcome).observe(
            max(0.0, now - task.created_at)
        )
        self._ctx.metrics.task_run_seconds.labels(outcome).observe(run_seconds)
        self._ctx.metrics.task_duration_seconds.labels(
            task.key.model, task.priority.label, outcome
        ).observe(run_seconds)

    def _delete_audio(self, task_id: str, known: Task | None = None) -> None:
        """A final task's audio is no longer needed; its result stays until retention ends.
        `known`: the task as the store just returned it, which spares a read."""
        task = known if known is not None else self._ctx.store.get(task_id)
        if task is None or not task.state.is_final:
            return
        try:
            self._ctx.audio.delete(task.audio_path)
        except Exception as exc:
            log.warning("could not delete audio of task %s: %s", task_id, exc)
