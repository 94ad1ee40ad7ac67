"""The periodic work of a node: lease heartbeats, cancels and timeouts, recovery of expired
leases, pruning, and device watching (metrics, early memory warnings, lost devices)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gpuscribe.config import Settings
from gpuscribe.metrics import Metrics
from gpuscribe.node.devices import DeviceSlot
from gpuscribe.node.running import RunningTasks
from gpuscribe.store.audio import ORPHAN_AGE_SECONDS, AudioStore
from gpuscribe.store.base import TaskStore
from gpuscribe.telemetry.base import GpuTelemetry
from gpuscribe.telemetry.history import DeviceHistory, DeviceSample

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 10.0


class Upkeep:
    def __init__(
        self,
        *,
        settings: Settings,
        store: TaskStore,
        audio: AudioStore,
        telemetry: GpuTelemetry,
        slots: dict[str, DeviceSlot],
        running: RunningTasks,
        metrics: Metrics,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._audio = audio
        self._telemetry = telemetry
        self._slots = slots
        self._running = running
        self._metrics = metrics
        self._clock = clock
        self._wake = wake
        self.history = DeviceHistory()  # the last minutes of each device, for the dashboard

    # --- leases ---------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Renew this node's leases; stop tasks whose lease was lost or that were cancelled."""
        tasks = self._running.all()
        if not tasks:
            return
        now = self._clock()
        held = self._store.renew(
            [(t.task_id, t.token) for t in tasks],
            lease_seconds=self._settings.lease_seconds,
            now=now,
        )
        for t in tasks:
            if t.task_id not in held:
                if self._running.get(t.task_id) is not t:
                    continue  # it finished while the leases were renewed: nothing was lost
                log.warning("lease of task %s lost; stopping it here", t.task_id)
                t.stop_reason = t.stop_reason or "lease lost"
                self._stop(t.task_id, now)
                continue
            stored = self._store.get(t.task_id)
            if stored is not None and stored.cancel_requested:
                self._stop(t.task_id, now)
            elif now - t.started_at > self._settings.task_timeout_seconds:
                log.warning(
                    "task %s ran past its %.0f s timeout",
                    t.task_id,
                    self._settings.task_timeout_seconds,
                )
                t.stop_reason = t.stop_reason or "timeout"
                self._stop(t.task_id, now)

    def flush_progress(self) -> None:
        """Write the progress workers reported since the last flush, all tasks in one
        transaction (the store ignores a lease that moved on)."""
        pending = [(t, t.progress) for t in self._running.all() if t.progress is not None]
        if not pending:
            return
        self._store.set_progress_many(
            [(t.task_id, t.token, p) for t, p in pending if p is not None]
        )
        for t, p in pending:
            if t.progress == p:  # a newer report waits for the next flush
                t.progress = None

    def _stop(self, task_id: str, now: float) -> None:
        """Cancel first; a task that ignores the cancel past the grace period is killed."""
        task = self._running.get(task_id)
        if task is None:
            return
        worker = self._slots[task.device_uuid].worker
        if task.cancel_sent_at is None:
            task.cancel_sent_at = now
            worker.cancel(task_id)
        elif not task.killed and now - task.cancel_sent_at > KILL_GRACE_SECONDS:
            task.killed = True
            worker.kill_task(task_id)

    def recover(self) -> None:
        recovered = self._store.recover_expired(now=self._clock())
        if recovered:
            log.warning("recovered %d task(s) whose lease ran out: %s", len(recovered), recovered)
            self._wake()

    def prune(self) -> None:
        now = self._clock()
        for task in self._store.prune(finished_before=now - self._settings.retention_seconds):
            self._audio.delete(task.audio_path)
        self._audio.sweep(created_before=now - ORPHAN_AGE_SECONDS)

    # --- devices --------------------------------------------------------------------------
    def watch_devices(self) -> None:
        for slot in self._slots.values():
            reading = self._telemetry.read(slot.uuid)
            slot.reading = reading
            labels = (str(slot.device.index), slot.uuid)
            total = reading.memory_total_bytes or 1
            self._metrics.memory_used.labels(*labels).set(reading.memory_used_bytes)
            self._metrics.memory_utilization.labels(*labels).set(reading.memory_used_bytes / total)
            self._metrics.memory_reserved.labels(*labels).set(slot.ledger.admitted_bytes)
            self._metrics.memory_cap.labels(*labels).set(slot.ledger.cap_bytes)
            self._metrics.tasks_running.labels(*labels).set(slot.ledger.running_tasks)
            self._warn_if_high(slot, reading.memory_used_bytes / total)
            self._record_history(slot)
            if not reading.healthy:
                log.error("device %s is unhealthy (%s): drained", slot.uuid, reading.error)

    def _record_history(self, slot: DeviceSlot) -> None:
        sample = DeviceSample.of(
            slot.reading,
            foreign_bytes=slot.foreign_bytes(),
            reserved_bytes=slot.ledger.admitted_bytes,
            cap_bytes=slot.ledger.cap_bytes,
        )
        self.history.record(slot.uuid, sample)

    def _warn_if_high(self, slot: DeviceSlot, fraction: float) -> None:
        threshold = self._settings.memory_warning_fraction
        if fraction > threshold and not slot.warned:
            slot.warned = True
            self._metrics.memory_warnings.labels(str(slot.device.index), slot.uuid).inc()
            log.warning(
                "GPU %d (%s) memory use %.1f%% passed the warning threshold of %.0f%%",
                slot.device.index,
                slot.uuid,
                100 * fraction,
                100 * threshold,
            )
        elif fraction <= threshold:
            slot.warned = False
