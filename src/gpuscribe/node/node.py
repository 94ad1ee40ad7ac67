"""The node: builds the parts, runs the loops, and serves the API as its `Backend`."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gpuscribe.api.backend import CalibrationRow, DeviceView, QueueFull
from gpuscribe.config import Settings
from gpuscribe.domain import NewTask, Task, TaskState
from gpuscribe.memory.types import MemoryEstimate, ProfileKey
from gpuscribe.node.calibration_view import calibration_rows
from gpuscribe.node.parts import build_parts
from gpuscribe.store.base import QueueLimitReached, TaskStore
from gpuscribe.store.open import open_store
from gpuscribe.telemetry.base import DeviceKind, GpuTelemetry
from gpuscribe.telemetry.cache import CachedTelemetry
from gpuscribe.telemetry.detect import open_telemetry

log = logging.getLogger(__name__)


class Node:
    """One machine's share of gpuscribe. Thread-safe; start() then stop()."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: TaskStore | None = None,
        telemetry: GpuTelemetry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        settings.audio_dir.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._wake_event = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        parts = build_parts(
            settings,
            store if store is not None else open_store(settings.store_url),
            telemetry if telemetry is not None else open_telemetry(settings),
            clock=clock,
            wake=self.wake,
        )
        self.store = parts.store
        self.telemetry = parts.telemetry
        self._display = CachedTelemetry(self.telemetry, ttl_seconds=1.0)
        self.metrics = parts.metrics
        self.running = parts.running
        self.book = parts.book
        self.estimator = parts.estimator
        self.slots = parts.slots
        self._pass = parts.scheduler
        self._upkeep = parts.upkeep

    @property
    def default_engine(self) -> str:
        if self.settings.default_engine:
            return self.settings.default_engine
        kinds = {s.kind for s in self.slots.values()}
        return "transformers" if DeviceKind.CUDA in kinds else "faster-whisper"

    # --- life -------------------------------------------------------------------------------
    def start(self) -> None:
        self._requeue_own_orphans()
        self._sweep_orphan_audio()
        for slot in self.slots.values():
            slot.worker.start()
        loops: list[tuple[str, Callable[[], None], float]] = [
            ("heartbeat", self._upkeep.heartbeat, self.settings.heartbeat_seconds),
            ("recovery", self._upkeep.recover, max(1.0, self.settings.lease_seconds / 3)),
            ("prune", self._upkeep.prune, min(3600.0, self.settings.retention_seconds / 10)),
            ("devices", self._upkeep.watch_devices, 1.0),
        ]
        self._spawn("scheduler", self._schedule_forever)
        for name, fn, every in loops:
            self._spawn(name, functools.partial(self._every, fn, every))

    def stop(self) -> None:
        self._stopping.set()
        self._wake_event.set()
        for thread in self._threads:  # no pass may dispatch to a stopped worker
            thread.join(timeout=10)
        for slot in self.slots.values():  # their last events still reach the open store
            slot.worker.stop()
        self.telemetry.close()
        self.store.close()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"gpuscribe-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _every(self, fn: Callable[[], None], seconds: float) -> None:
        while not self._stopping.wait(seconds):
            try:
                fn()
            except Exception:
                log.exception("%s failed", getattr(fn, "__name__", fn))

    def _schedule_forever(self) -> None:
        while not self._stopping.is_set():
            self._wake_event.wait(self.settings.scheduler_interval_seconds)
            self._wake_event.clear()
            if self._stopping.is_set():
                return
            try:
                self._pass.run_once()
            except Exception:
                log.exception("scheduling pass failed")

    def wake(self) -> None:
        self._wake_event.set()

    def _requeue_own_orphans(self) -> None:
        """Tasks this node was running when it died cannot still be running: requeue them now
        rather than waiting for their leases to run out."""
        now = self._clock()
        for task in self.store.list(state=TaskState.RUNNING, limit=100_000):
            if task.node == self.settings.node_name and task.lease_token:
                self.store.fail(
                    task.id,
                    task.lease_token,
                    "the node restarted while it ran",
                    retry_at=now,
                    now=now,
                )
                log.warning("requeued task %s, which was running when this node stopped", task.id)

    def _sweep_orphan_audio(self) -> None:
        """Uploads cut off by a crash (`.upload-*.part`) and audio no live task refers to are
        removed at start, before this node accepts uploads: crashes must not fill the disk."""
        live = {
            Path(t.audio_path).name
            for state in (TaskState.QUEUED, TaskState.RUNNING)
            for t in self.store.list(state=state, limit=10 * self.settings.max_queue_length)
        }
        removed = 0
        for path in self.settings.audio_dir.iterdir():
            if path.is_file() and path.name not in live:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.warning("removed %d audio file(s) that no live task refers to", removed)

    # --- Backend ----------------------------------------------------------------------------
    def submit(self, new: NewTask) -> tuple[Task, bool]:
        try:
            task, created = self.store.add(
                new, now=self._clock(), max_queued=self.settings.max_queue_length
            )
        except QueueLimitReached as exc:
            self.metrics.submissions.labels("rejected").inc()
            raise QueueFull(retry_after_seconds=self._retry_after()) from exc
        self.metrics.submissions.labels("accepted" if created else "duplicate").inc()
        if created:
            self.wake()
        return task, created

    def _retry_after(self) -> int:
        return max(1, int(self.settings.scheduler_interval_seconds * 10) + len(self.running))

    def cancel(self, task_id: str) -> Task | None:
        task = self.store.cancel(task_id, now=self._clock())
        if task is not None and task.state is TaskState.RUNNING:
            running = self.running.get(task_id)
            if running is not None:
                running.cancel_sent_at = self._clock()
                self.slots[running.device_uuid].worker.cancel(task_id)
        if task is not None and task.state is TaskState.CANCELLED:
            Path(task.audio_path).unlink(missing_ok=True)
        return task

    def devices(self, *, fresh: bool = False) -> list[DeviceView]:
        source = self.telemetry if fresh else self._display
        views = []
        for slot in self.slots.values():
            reading = source.read(slot.uuid)
            snap = slot.ledger.snapshot()
            views.append(
                DeviceView(
                    reading=reading,
                    memory_reserved_bytes=snap.admitted_bytes,
                    memory_cap_bytes=snap.cap_bytes,
                    tasks_running=snap.tasks_running,
                    max_tasks=slot.ledger.max_tasks,
                    resident_models=tuple(sorted(slot.resident)),
                    draining=not reading.healthy,
                )
            )
        return views

    def calibration(self) -> list[CalibrationRow]:
        return calibration_rows(self.book, self.estimator, self.slots.values())

    def estimate(self, key: ProfileKey, audio_seconds: float) -> MemoryEstimate:
        kind = next(
            (s.kind for s in self.slots.values() if s.device.name == key.gpu_name), DeviceKind.CUDA
        )
        return self.estimator.estimate(key, audio_seconds, device_kind=kind)

    def healthy(self) -> bool:
        return not self._stopping.is_set() and any(s.ready for s in self.slots.values())
