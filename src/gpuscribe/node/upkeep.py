"""The periodic work of a node: lease heartbeats, cancels and timeouts, recovery of expired
leases, pruning, and device watching (metrics, early memory warnings, lost devices)."""

from __future__ import annotations

import logging

from gpuscribe.memory.warning import MemorySample, WarningThresholds, began, ended, observe
from gpuscribe.node.context import NodeContext
from gpuscribe.node.devices import DeviceSlot
from gpuscribe.store.audio import ORPHAN_AGE_SECONDS
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.telemetry.history import DeviceHistory, DeviceSample

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 10.0


class Upkeep:
    def __init__(self, context: NodeContext) -> None:
        self._ctx = context  # the collaborators this part shares with the node's others
        self._thresholds = WarningThresholds.of(context.settings)
        self.history = DeviceHistory()  # the last minutes of each device, for the dashboard

    # --- leases ---------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Renew this node's leases; stop tasks whose lease was lost or that were cancelled."""
        tasks = self._ctx.running.all()
        if not tasks:
            return
        now = self._ctx.clock()
        held = self._ctx.store.renew(
            [(t.task_id, t.token) for t in tasks],
            lease_seconds=self._ctx.settings.lease_seconds,
            now=now,
        )
        cancelled = self._ctx.store.cancels_requested(node=self._ctx.settings.node_name)
        for t in tasks:
            if t.task_id not in held:
                if self._ctx.running.get(t.task_id) is not t:
                    continue  # it finished while the leases were renewed: nothing was lost
                log.warning("lease of task %s lost; stopping it here", t.task_id)
                t.stop_reason = t.stop_reason or "lease lost"
                self._stop(t.task_id, now)
                continue
            if t.task_id in cancelled:
                self._stop(t.task_id, now)
            elif now - t.started_at > self._ctx.settings.task_timeout_seconds:
                log.warning(
                    "task %s ran past its %.0f s timeout",
                    t.task_id,
                    self._ctx.settings.task_timeout_seconds,
                )
                t.stop_reason = t.stop_reason or "timeout"
                self._stop(t.task_id, now)

    def stop_cancelled(self) -> None:
        """Send the cancels asked of this node's tasks to their workers now, rather than at the
        next heartbeat. A cancel has one route, whichever node took it: the store's flag, which
        this node reads here and at each heartbeat (one query for all its tasks)."""
        now = self._ctx.clock()
        for task_id in self._ctx.store.cancels_requested(node=self._ctx.settings.node_name):
            self._stop(task_id, now)

    def flush_progress(self) -> None:
        """Write the progress workers reported since the last flush, all tasks in one
        transaction (the store ignores a lease that moved on)."""
        pending = [(t, t.progress) for t in self._ctx.running.all() if t.progress is not None]
        if not pending:
            return
        self._ctx.store.set_progress_many(
            [(t.task_id, t.token, p) for t, p in pending if p is not None]
        )
        for t, p in pending:
            if t.progress == p:  # a newer report waits for the next flush
                t.progress = None

    def _stop(self, task_id: str, now: float) -> None:
        """Cancel first; a task that ignores the cancel past the grace period is killed."""
        task = self._ctx.running.get(task_id)
        if task is None:
            return
        worker = self._ctx.slots[task.device_uuid].worker
        if task.cancel_sent_at is None:
            task.cancel_sent_at = now
            worker.cancel(task_id)
        elif not task.killed and now - task.cancel_sent_at > KILL_GRACE_SECONDS:
            task.killed = True
            worker.kill_task(task_id)

    def recover(self) -> None:
        """Expired leases go back to the queue, or fail once their attempts are spent: their
        waiters are told either way (a requeued task's read again, still not final)."""
        recovered = self._ctx.store.recover_expired(now=self._ctx.clock())
        self._ctx.finals.signal_all(recovered)
        if recovered:
            log.warning("recovered %d task(s) whose lease ran out: %s", len(recovered), recovered)
            self._ctx.wake()

    def prune(self) -> None:
        now = self._ctx.clock()
        for task in self._ctx.store.prune(
            finished_before=now - self._ctx.settings.retention_seconds
        ):
            self._ctx.audio.delete(task.audio_path)
        self._ctx.audio.sweep(created_before=now - ORPHAN_AGE_SECONDS)

    # --- devices --------------------------------------------------------------------------
    def watch_devices(self) -> None:
        """Read every device fresh: publish its figures, and begin or end its memory warning
        episode (memory/warning.py), which closes the device to admission while it lasts."""
        for slot in self._ctx.slots.values():
            reading = self._ctx.telemetry.read(slot.uuid)
            slot.reading = reading
            labels = slot.metric_labels(self._ctx.settings.node_name)
            foreign = slot.foreign_bytes()  # once per reading: metrics, warning and history
            self._publish(slot, labels, foreign)
            if slot.kind is not DeviceKind.CPU:  # the CPU's memory is the whole machine's
                self._watch_memory(slot, labels, foreign)
            self._record_history(slot, foreign)
            if not reading.healthy:
                log.error("device %s is unhealthy (%s): drained", slot.uuid, reading.error)

    def _publish(self, slot: DeviceSlot, labels: tuple[str, ...], foreign: int) -> None:
        metrics, reading, ledger = self._ctx.metrics, slot.reading, slot.ledger
        used = reading.memory_used_bytes
        metrics.memory_used.labels(*labels).set(used)
        metrics.memory_utilization.labels(*labels).set(used / (reading.memory_total_bytes or 1))
        metrics.memory_reserved.labels(*labels).set(ledger.admitted_bytes)
        metrics.memory_cap.labels(*labels).set(ledger.cap_bytes)
        metrics.tasks_running.labels(*labels).set(ledger.running_tasks)
        metrics.memory_foreign.labels(*labels).set(foreign)

    def _record_history(self, slot: DeviceSlot, foreign: int) -> None:
        sample = DeviceSample.of(
            slot.reading,
            foreign_bytes=foreign,
            reserved_bytes=slot.ledger.admitted_bytes,
            cap_bytes=slot.ledger.cap_bytes,
        )
        self.history.record(slot.uuid, sample)

    def _watch_memory(self, slot: DeviceSlot, labels: tuple[str, ...], foreign: int) -> None:
        reading = slot.reading
        sample = MemorySample(
            at=self._ctx.clock(),
            total_bytes=reading.memory_total_bytes,
            used_bytes=reading.memory_used_bytes,
            # A worker holds its CUDA context while it lives: a device that lists none of the
            # workers' memory does not tell gpuscribe's memory from other processes', and the
            # growth rule has nothing to go on there.
            foreign_bytes=foreign if slot.attributed else None,
            tasks_running=slot.ledger.running_tasks,
            admitted_bytes=slot.ledger.admitted_bytes,
        )
        before, slot.watch = slot.watch, observe(slot.watch, sample, self._thresholds)
        warning = slot.watch.warning
        self._ctx.metrics.memory_warning.labels(*labels).set(0 if warning is None else 1)
        if began(before, slot.watch) and warning is not None:
            self._ctx.metrics.memory_warnings.labels(*labels, warning.condition.value).inc()
            log.warning(
                "memory warning on GPU %d (%s): %s; no new task goes there until it recovers",
                slot.device.index, slot.uuid, warning.message,
            )  # fmt: skip
        elif ended(before, slot.watch):
            log.info(
                "memory warning on GPU %d (%s) is over: tasks are admitted there again",
                slot.device.index, slot.uuid,
            )  # fmt: skip
            self._ctx.wake()
        self._free_idle_models(slot)

    def _free_idle_models(self, slot: DeviceSlot) -> None:
        """A warned GPU with nothing running unloads the models it holds idle, once per episode.
        The warning closes the GPU to new tasks, and only a new task's admission would evict
        them: were they what keeps used memory past the level, the episode could never end."""
        warning = slot.watch.warning
        if warning is None or slot.freed_for == warning.since or slot.ledger.running_tasks:
            return
        slot.freed_for = warning.since
        idle = [m.model for m in slot.ledger.snapshot().models if m.loaded and m.running == 0]
        for model in idle:
            slot.worker.unload(model)
        if idle:
            log.info(
                "memory warning on GPU %d (%s) with no task running: unloading its idle models %s",
                slot.device.index, slot.uuid, ", ".join(m.model for m in idle),
            )  # fmt: skip
