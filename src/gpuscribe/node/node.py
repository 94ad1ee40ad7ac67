"""The node: builds the parts, runs the loops, and serves the API as its `Backend`."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

from gpuscribe.api.backend import CalibrationRow, DeviceTrace, DeviceView, QueueFull
from gpuscribe.api.reads import StoreReads
from gpuscribe.config import Settings
from gpuscribe.domain import NewTask, Task, TaskState
from gpuscribe.memory.types import MemoryEstimate, ProfileKey
from gpuscribe.node.calibration_view import calibration_rows
from gpuscribe.node.cluster import Role, cluster_devices, device_json
from gpuscribe.node.parts import build_parts
from gpuscribe.store.audio import ORPHAN_AGE_SECONDS, adopt_file
from gpuscribe.store.base import NodeRecord, QueueLimitReached, TaskStore
from gpuscribe.store.open import open_store
from gpuscribe.telemetry.base import DeviceKind, GpuTelemetry
from gpuscribe.telemetry.cache import CachedTelemetry
from gpuscribe.telemetry.detect import open_telemetry

log = logging.getLogger(__name__)

PROGRESS_FLUSH_SECONDS = 1.0  # workers' progress reports reach the store this often, batched


class Node(StoreReads):
    """One machine's share of gpuscribe. Thread-safe; start() then stop().

    Its `role` says what it runs: `serve` (the API and workers on its devices), `api` (the API
    only: no device, no scheduler) or `worker` (workers only; the caller serves no HTTP).
    The API reads through it (`StoreReads`), from its store."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: TaskStore | None = None,
        telemetry: GpuTelemetry | None = None,
        clock: Callable[[], float] = time.time,
        role: Role = Role.SERVE,
    ) -> None:
        self.settings = settings
        self.role = role
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
            with_workers=role.has_workers,
        )
        shared = parts.context
        self.store = shared.store
        self.audio = shared.audio
        self.telemetry = shared.telemetry
        self._display = CachedTelemetry(self.telemetry, ttl_seconds=1.0)
        self.metrics = shared.metrics
        self.running = shared.running
        self.book = parts.book
        self.estimator = parts.estimator
        self.slots = shared.slots
        self.finals = shared.finals
        self._pass = parts.scheduler
        self._upkeep = parts.upkeep
        self._started_at = clock()
        self._heartbeat_at: float | None = None
        self._kinds_cache: tuple[float, set[DeviceKind]] | None = None

    @property
    def default_engine(self) -> str:
        if self.settings.default_engine:
            return self.settings.default_engine
        kinds = {s.kind for s in self.slots.values()}
        if not self.slots:  # an API-only node: the engine the cluster's devices take
            kinds = self._cluster_kinds()
        return "transformers" if DeviceKind.CUDA in kinds else "faster-whisper"

    def _cluster_kinds(self) -> set[DeviceKind]:
        """The kinds of the cluster's devices, read at most once per heartbeat interval (each
        submission to an API-only node asks)."""
        now = self._clock()
        cached = self._kinds_cache
        if cached is None or now - cached[0] > self.settings.heartbeat_seconds:
            kinds = {DeviceKind(d["kind"]) for n in self.store.nodes(now=now) for d in n.devices}
            self._kinds_cache = cached = (now, kinds)
        return cached[1]

    # --- life -------------------------------------------------------------------------------
    def start(self) -> None:
        self._requeue_own_orphans()
        self._sweep_orphan_audio()
        self.audio.sweep(created_before=self._clock() - ORPHAN_AGE_SECONDS)
        for slot in self.slots.values():
            slot.worker.start()
        self.beat()
        loops: list[tuple[str, Callable[[], None], float]] = [
            ("heartbeat", self._heartbeat, self.settings.heartbeat_seconds),
            ("recovery", self._upkeep.recover, max(1.0, self.settings.lease_seconds / 3)),
            ("prune", self._upkeep.prune, min(3600.0, self.settings.retention_seconds / 10)),
        ]
        if self.role.has_workers:
            loops.append(("devices", self._upkeep.watch_devices, 1.0))
            loops.append(("progress", self._upkeep.flush_progress, PROGRESS_FLUSH_SECONDS))
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
        with contextlib.suppress(Exception):
            self._upkeep.flush_progress()
        try:
            self.store.remove_node(self.settings.node_name)  # it leaves the cluster's view now
        except Exception:
            log.exception("could not remove this node from the store's list of nodes")
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

    def _heartbeat(self) -> None:
        self._upkeep.heartbeat()
        self.beat()

    def beat(self) -> NodeRecord:
        """Write this node's record (role, devices) with a lease: the cluster's view of it."""
        now = self._clock()
        record = self._record(now)
        self.store.heartbeat_node(record)
        self._heartbeat_at = now
        return record

    def _record(self, now: float) -> NodeRecord:
        return NodeRecord(
            name=self.settings.node_name,
            role=self.role.value,
            started_at=self._started_at,
            heartbeat_at=now,
            expires_at=now + self.settings.lease_seconds,
            devices=tuple(device_json(v) for v in self._local_devices(fresh=False)),
        )

    def _requeue_own_orphans(self) -> None:
        """Tasks this node was running when it died cannot still be running: requeue them now
        rather than waiting for their leases to run out."""
        now = self._clock()
        for task in self.store.list_tasks(state=TaskState.RUNNING, limit=100_000):
            if task.node == self.settings.node_name and task.lease_token:
                outcome = self.store.fail(
                    task.id,
                    task.lease_token,
                    "the node restarted while it ran",
                    retry_at=now,
                    now=now,
                )
                if outcome is not None and outcome.state.is_final:  # its attempts were spent
                    self.finals.signal(task.id)
                log.warning("requeued task %s, which was running when this node stopped", task.id)

    def _sweep_orphan_audio(self) -> None:
        """Uploads cut off by a crash (`.upload-*.part`) and audio no live task refers to are
        removed at start, before this node accepts uploads: crashes must not fill the disk."""
        live = {
            Path(t.audio_path).name
            for state in (TaskState.QUEUED, TaskState.RUNNING)
            for t in self.store.list_tasks(state=state, limit=10 * self.settings.max_queue_length)
        }
        removed = 0
        for path in self.settings.audio_dir.iterdir():
            if path.is_file() and path.name not in live:
                path.unlink(missing_ok=True)
                removed += 1
        spool = Path(self.settings.data_dir) / "spool"  # copies workers decoded (PostgreSQL audio)
        for path in spool.glob("spool-*") if spool.is_dir() else ():
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.warning("removed %d audio file(s) that no live task refers to", removed)

    # --- Backend ----------------------------------------------------------------------------
    def submit(self, new: NewTask) -> tuple[Task, bool]:
        """The upload at `new.audio_path` moves into the audio store first (PostgreSQL: every
        node can read it); a rejected or repeated submission deletes it there again."""
        ref = adopt_file(self.audio, Path(new.audio_path))
        moved = ref != new.audio_path  # else the caller still owns the file, as before
        try:
            task, created = self.store.add(
                replace(new, audio_path=ref),
                now=self._clock(),
                max_queued=self.settings.max_queue_length,
            )
        except QueueLimitReached as exc:
            if moved:
                self.audio.delete(ref)
            self.metrics.submissions.labels("rejected").inc()
            raise QueueFull(retry_after_seconds=self._retry_after()) from exc
        except BaseException:
            if moved:
                self.audio.delete(ref)
            raise
        if not created and moved:
            self.audio.delete(ref)
        self.metrics.submissions.labels("accepted" if created else "duplicate").inc()
        if created:
            self.wake()
        return task, created

    def _retry_after(self) -> int:
        return max(1, int(self.settings.scheduler_interval_seconds * 10) + len(self.running))

    def cancel(self, task_id: str) -> Task | None:
        """A running task's cancel is a flag in the store; the node running it sends it to the
        worker (this one at once, another at its next heartbeat)."""
        task = self.store.cancel(task_id, now=self._clock())
        if task is None:
            return None
        if task.state is TaskState.RUNNING and task.node == self.settings.node_name:
            self._upkeep.stop_cancelled()
        if task.state is TaskState.CANCELLED:
            self.finals.signal(task_id)
            self.audio.delete(task.audio_path)
        return task

    def watch_final(self, task_id: str, notify: Callable[[], None]) -> AbstractContextManager[None]:
        """`notify` is called when the task becomes final on this node (`FinalTasks`)."""
        return self.finals.watch(task_id, notify)

    def devices(self, *, fresh: bool = False) -> list[DeviceView]:
        """Every live node's devices: this node's read now (or from a short cache), the others'
        as their last heartbeat wrote them."""
        now = self._clock()
        own = NodeRecord(
            self.settings.node_name, self.role.value, self._started_at,
            self._heartbeat_at or now, now + self.settings.lease_seconds,
        )  # fmt: skip
        return cluster_devices(self._local_devices(fresh=fresh), own, self.store.nodes(now=now))

    def _local_devices(self, *, fresh: bool) -> list[DeviceView]:
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
                    # by name, each once: two engines may hold the same model on one GPU
                    resident_models=tuple(sorted({m.model.model for m in snap.models if m.loaded})),
                    draining=not reading.healthy,
                    memory_warning=slot.memory_warning,
                )
            )
        return views

    def device_history(self, seconds: float) -> list[DeviceTrace]:
        start = self._clock() - seconds
        name, history = self.settings.node_name, self._upkeep.history
        return [
            DeviceTrace(slot.device.index, slot.uuid, name, history.since(slot.uuid, start))
            for slot in self.slots.values()
        ]

    def calibration(self) -> list[CalibrationRow]:
        return calibration_rows(self.book, self.estimator, self.slots.values())

    def estimate(self, key: ProfileKey, audio_seconds: float) -> MemoryEstimate:
        slot = next((s for s in self.slots.values() if s.device.name == key.gpu_name), None)
        if slot is None:
            return self.estimator.estimate(key, audio_seconds, device_kind=DeviceKind.CUDA)
        return self.estimator.estimate(
            key, audio_seconds, device_kind=slot.kind, total_bytes=slot.ledger.total_bytes
        )

    def healthy(self) -> bool:
        if not self.role.has_workers:
            return not self._stopping.is_set()
        return not self._stopping.is_set() and any(s.ready for s in self.slots.values())
