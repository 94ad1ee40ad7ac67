"""A worker on a simulated GPU: in-process threads that hold what a real worker would hold.

It charges the simulated device with the measured reference figures (memory/profiles.py): the
CUDA context once, each model's weights once while resident, each task's working memory while it
runs. No audio is decoded and no transcript is made: a task sleeps `audio_seconds /
simulation_speed` and completes with a transcript marked `simulated`. An over-admission shows as
it would on a real GPU: the allocation fails and the task reports OUT_OF_MEMORY.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

from gpuscribe.audio import WINDOW_SECONDS
from gpuscribe.config import Settings
from gpuscribe.domain import Segment, Transcript
from gpuscribe.memory.profiles import (
    REFERENCE_CONTEXT_BYTES,
    reference_weights_bytes,
    reference_working_bytes,
)
from gpuscribe.memory.types import GIB, ModelKey
from gpuscribe.telemetry.simulated import SimulatedGpuLost, SimulatedGpus, SimulatedOutOfMemory
from gpuscribe.workers.base import EventSink, TaskCancelled
from gpuscribe.workers.measure import OverlapTracker, ProgressThrottle
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
    WorkerEvent,
    WorkerReady,
)
from gpuscribe.workers.process import ModelCache, model_key

log = logging.getLogger(__name__)

LOAD_BYTES_PER_SECOND = 2 * GIB  # simulated model load rate (disk to device)
STEP_SECONDS = 0.02  # how often a running task looks at its stop flag


def simulated_transcript(audio_seconds: float) -> Transcript:
    """What a simulated task returns: no words, one "[simulated]" segment per 30 s window."""
    count = math.ceil(audio_seconds / WINDOW_SECONDS) if audio_seconds > 0 else 0
    segments = tuple(
        Segment(
            id=i,
            start=i * WINDOW_SECONDS,
            end=min((i + 1) * WINDOW_SECONDS, audio_seconds),
            text="[simulated]",
        )
        for i in range(count)
    )
    return Transcript(
        text="", language=None, duration=audio_seconds, segments=segments, simulated=True
    )


@dataclass(slots=True)
class _SimTask:
    command: RunTask
    stop: threading.Event = field(default_factory=threading.Event)
    stop_kind: FailureKind = FailureKind.CANCELLED
    stop_error: str = "cancelled"
    thread: threading.Thread | None = None


class SimulatedWorker:
    """`WorkerHandle` of one simulated device."""

    def __init__(
        self,
        device: DeviceRef,
        gpus: SimulatedGpus,
        settings: Settings,
        sink: EventSink,
        *,
        pid: int,
    ) -> None:
        self.device = device
        self._gpus = gpus
        self._settings = settings
        self._sink = sink
        self._pid = pid
        self._models: ModelCache[int] = ModelCache(self._load, self._unload)
        self._overlap = OverlapTracker()
        self._tasks: dict[str, _SimTask] = {}
        self._lock = threading.Lock()
        self._alive = False

    # WorkerHandle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._gpus.allocate(self.device.uuid, self._pid, REFERENCE_CONTEXT_BYTES)
        with self._lock:
            self._alive = True
        self._emit(WorkerReady(self.device.uuid, self._pid, REFERENCE_CONTEXT_BYTES))

    def run(self, command: RunTask) -> None:
        task = _SimTask(command)
        with self._lock:  # registered and started together: stop() never sees it half-made
            alive, duplicate = self._alive, command.task_id in self._tasks
            if alive and not duplicate:
                self._tasks[command.task_id] = task
                task.thread = threading.Thread(
                    target=self._task_thread, args=(task,), name=f"sim-{command.task_id}",
                    daemon=True,
                )  # fmt: skip
                task.thread.start()
        if not alive:
            failed = TaskFailed(
                command.task_id, command.lease_token, FailureKind.TRANSIENT, "worker not running"
            )
            # From a thread of our own: the caller may hold locks that the sink takes.
            threading.Thread(target=self._emit, args=(failed,), daemon=True).start()
            return
        if duplicate:
            log.warning("task %s is already running here; ignoring", command.task_id)

    def cancel(self, task_id: str) -> None:
        self._stop_task(task_id, FailureKind.CANCELLED, "cancelled")

    def unload(self, model: ModelKey) -> None:
        # From a thread of our own, as the real worker does: the caller may hold locks the
        # sink takes.
        threading.Thread(target=self._models.evict, args=(model,), daemon=True).start()

    def kill_task(self, task_id: str) -> None:
        self._stop_task(task_id, FailureKind.TIMEOUT, "task stopped after its timeout")

    def alive(self) -> bool:
        with self._lock:
            return self._alive

    def pids(self) -> set[int]:
        return {self._pid}

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._alive = False
            tasks = list(self._tasks.values())
        for task in tasks:
            self._stop_task(task.command.task_id, FailureKind.TRANSIENT, "worker stopped")
        deadline = time.monotonic() + timeout
        for task in tasks:
            if task.thread is not None:
                task.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._models.clear()
        self._gpus.free_all(self.device.uuid, self._pid)

    # tasks ------------------------------------------------------------------------------------
    def _stop_task(self, task_id: str, kind: FailureKind, error: str) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.stop.is_set():
                return
            task.stop_kind, task.stop_error = kind, error
            task.stop.set()

    def _task_thread(self, task: _SimTask) -> None:
        command = task.command
        self._emit(TaskStarted(command.task_id, command.lease_token))
        self._overlap.begin(command.task_id)
        started = time.monotonic()
        try:
            event = self._execute(task, started)
        finally:
            with self._lock:
                self._tasks.pop(command.task_id, None)
        self._emit(event)

    def _execute(self, task: _SimTask, started: float) -> TaskCompleted | TaskFailed:
        command = task.command
        try:
            peak, working = self._hold_and_run(task)
        except BaseException as exc:
            self._overlap.end(command.task_id)
            kind, error = self._classify(task, exc)
            return TaskFailed(command.task_id, command.lease_token, kind, error)
        ran_alone = self._overlap.end(command.task_id)
        self._emit(TaskProgress(command.task_id, command.lease_token, 1.0))
        return TaskCompleted(
            task_id=command.task_id,
            lease_token=command.lease_token,
            transcript=simulated_transcript(command.audio_seconds),
            peak_bytes=peak,
            working_bytes=working,
            ran_alone=ran_alone,
            seconds=time.monotonic() - started,
        )

    def _hold_and_run(self, task: _SimTask) -> tuple[int, int]:
        """Load the model, hold the task's working memory while it "runs"; (peak, working)."""
        command = task.command
        options = command.options
        working = reference_working_bytes(options.model, options.batch_size, options.beam_size)
        key = model_key(command)
        for evicted in command.evict:
            if evicted != key:
                self._models.evict(evicted)
        self._models.acquire(key)
        try:
            self._gpus.allocate(self.device.uuid, self._pid, working)
            try:
                peak = REFERENCE_CONTEXT_BYTES + sum(self._models.resident().values()) + working
                self._pretend_to_transcribe(task)
            finally:
                self._gpus.free(self.device.uuid, self._pid, working)
        finally:
            self._models.release(key)
        return peak, working

    def _pretend_to_transcribe(self, task: _SimTask) -> None:
        """Sleep through the task, reporting progress below 1 (completion reports 1)."""
        command = task.command
        duration = command.audio_seconds / self._settings.simulation_speed
        throttle = ProgressThrottle()
        began = time.monotonic()
        while True:
            elapsed = time.monotonic() - began
            if elapsed >= duration:
                return
            if task.stop.wait(min(STEP_SECONDS, duration - elapsed)):
                raise TaskCancelled(task.stop_error)
            value = throttle.offer((time.monotonic() - began) / duration)
            if value is not None and value < 1.0:
                self._emit(TaskProgress(command.task_id, command.lease_token, value))

    def _classify(self, task: _SimTask, exc: BaseException) -> tuple[FailureKind, str]:
        if isinstance(exc, TaskCancelled):
            return task.stop_kind, task.stop_error
        if isinstance(exc, SimulatedOutOfMemory):
            log.warning("task %s: %s", task.command.task_id, exc)
            return FailureKind.OUT_OF_MEMORY, str(exc)
        if isinstance(exc, SimulatedGpuLost):
            return FailureKind.TRANSIENT, str(exc)
        if isinstance(exc, ValueError):
            return FailureKind.BAD_INPUT, str(exc)
        log.error("simulated task %s failed", task.command.task_id, exc_info=exc)
        return FailureKind.TRANSIENT, f"{type(exc).__name__}: {exc}"

    # models -----------------------------------------------------------------------------------
    def _load(self, key: ModelKey) -> int:
        weights = reference_weights_bytes(key.model)
        self._gpus.allocate(self.device.uuid, self._pid, weights)
        seconds = weights / LOAD_BYTES_PER_SECOND
        time.sleep(seconds)
        self._emit(ModelLoaded(self.device.uuid, key, weights, seconds))
        return weights

    def _unload(self, key: ModelKey, weights: int) -> None:
        self._gpus.free(self.device.uuid, self._pid, weights)
        self._emit(ModelUnloaded(self.device.uuid, key))

    def _emit(self, event: WorkerEvent) -> None:
        try:
            self._sink(event)
        except Exception:
            log.exception("the event sink failed on %r", event)
