"""The in-memory store: dicts under one lock. Shipped for tests; the same semantics as SQL.

Tasks are copied in and out, so a caller never holds the store's own objects.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from gpuscribe.domain import NewTask, Priority, Task, TaskEvent, TaskState, Transcript
from gpuscribe.memory.types import CalibrationSample, ProfileKey
from gpuscribe.store import rows
from gpuscribe.store.base import Claim, NodeRecord, QueueCounts, QueueLimitReached


class InMemoryStore:
    """`TaskStore` held in this process only."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tasks: dict[str, Task] = {}
        self._order: dict[str, int] = {}  # insertion order breaks ties of created_at
        self._keys: dict[str, str] = {}
        self._events: dict[str, list[TaskEvent]] = {}
        self._results: dict[str, Transcript] = {}
        self._samples: dict[ProfileKey, list[tuple[int, CalibrationSample]]] = {}
        self._seq = itertools.count()
        self._nodes: dict[str, NodeRecord] = {}

    # --- helpers (called with the lock held) -------------------------------------------------
    def _event(self, task_id: str, at: float, state: TaskState, detail: str | None) -> None:
        self._events[task_id].append(TaskEvent(task_id, at, state, detail))

    def _leased(self, task_id: str, token: str) -> Task | None:
        task = self._tasks.get(task_id)
        if task is None or task.state != TaskState.RUNNING or task.lease_token != token:
            return None
        return task

    def _sorted(self, tasks: list[Task], *, newest_first: bool) -> list[Task]:
        tasks.sort(key=lambda t: (t.created_at, self._order[t.id]), reverse=newest_first)
        return [replace(t) for t in tasks]

    # --- submission and reading -------------------------------------------------------------
    def add(self, new: NewTask, *, now: float, max_queued: int | None = None) -> tuple[Task, bool]:
        with self._lock:
            if new.idempotency_key is not None and new.idempotency_key in self._keys:
                return replace(self._tasks[self._keys[new.idempotency_key]]), False
            if max_queued is not None:
                queued = sum(1 for t in self._tasks.values() if t.state == TaskState.QUEUED)
                if queued >= max_queued:
                    raise QueueLimitReached(queued)
            task = _new_task(rows.new_task_id(), new, now)
            self._tasks[task.id] = task
            self._order[task.id] = next(self._seq)
            if new.idempotency_key is not None:
                self._keys[new.idempotency_key] = task.id
            self._events[task.id] = []
            self._event(task.id, now, TaskState.QUEUED, rows.SUBMITTED)
            return replace(task), True

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else replace(task)

    def task_by_key(self, key: str) -> Task | None:
        with self._lock:
            task_id = self._keys.get(key)
            return None if task_id is None else replace(self._tasks[task_id])

    def list_tasks(self, *, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        with self._lock:
            found = [t for t in self._tasks.values() if state is None or t.state == state]
            return self._sorted(found, newest_first=True)[:limit]

    def queued(self, *, now: float, limit: int, priority: Priority | None = None) -> list[Task]:
        with self._lock:
            ready = [
                t
                for t in self._tasks.values()
                if t.state == TaskState.QUEUED
                and t.not_before <= now
                and (priority is None or t.priority == priority)
            ]
            return self._sorted(ready, newest_first=False)[:limit]

    def count_queued(self) -> int:
        with self._lock:
            return sum(1 for t in self._tasks.values() if t.state == TaskState.QUEUED)

    def counts(self) -> QueueCounts:
        by_state = {state.value: 0 for state in TaskState}
        by_priority = {p.label: 0 for p in Priority}
        with self._lock:
            for task in self._tasks.values():
                by_state[task.state.value] += 1
                if task.state == TaskState.QUEUED:
                    by_priority[task.priority.label] += 1
        return QueueCounts(by_state=by_state, by_priority=by_priority)

    def history(self, task_id: str) -> list[TaskEvent]:
        with self._lock:
            return list(self._events.get(task_id, []))

    def result(self, task_id: str) -> Transcript | None:
        with self._lock:
            return self._results.get(task_id)

    # --- the scheduler and workers -----------------------------------------------------------
    def claim(self, claim: Claim, *, now: float) -> Task | None:
        with self._lock:
            task = self._tasks.get(claim.task_id)
            if task is None or task.state != TaskState.QUEUED or task.not_before > now:
                return None
            task.state = TaskState.RUNNING
            task.node, task.gpu_index, task.gpu_uuid = claim.node, claim.gpu_index, claim.gpu_uuid
            task.memory_estimate_bytes = claim.memory_estimate_bytes
            task.started_at, task.finished_at = now, None
            task.lease_token = secrets.token_hex(16)
            task.lease_expires_at = now + claim.lease_seconds
            task.attempts += 1
            task.wait_reason, task.progress = None, 0.0
            detail = rows.claimed_detail(claim.node, claim.gpu_index, task.attempts)
            self._event(task.id, now, TaskState.RUNNING, detail)
            return replace(task)

    def claim_window(
        self,
        *,
        now: float,
        limit: int,
        decide: Callable[[list[Task]], Sequence[Claim]],
    ) -> tuple[list[Task], list[Task]]:
        with self._lock:
            window = [t for p in Priority for t in self.queued(now=now, limit=limit, priority=p)]
            claimed = [t for t in (self.claim(c, now=now) for c in decide(window)) if t]
            return window, claimed

    def renew(
        self, leases: Sequence[tuple[str, str]], *, lease_seconds: float, now: float
    ) -> set[str]:
        held: set[str] = set()
        with self._lock:
            for task_id, token in leases:
                task = self._leased(task_id, token)
                if task is not None:
                    task.lease_expires_at = now + lease_seconds
                    held.add(task_id)
        return held

    def set_progress(self, task_id: str, token: str, progress: float) -> bool:
        with self._lock:
            task = self._leased(task_id, token)
            if task is None:
                return False
            task.progress = progress
            return True

    def set_progress_many(self, updates: Sequence[tuple[str, str, float]]) -> None:
        with self._lock:
            for task_id, token, progress in updates:
                self.set_progress(task_id, token, progress)

    def complete(
        self, task_id: str, token: str, result: Transcript, *, peak_bytes: int | None, now: float
    ) -> bool:
        with self._lock:
            task = self._leased(task_id, token)
            if task is None:
                return False
            task.state, task.progress, task.error = TaskState.COMPLETED, 1.0, None
            task.memory_peak_bytes, task.finished_at = peak_bytes, now
            _drop_lease(task)
            self._results[task_id] = result
            if result.decoding_started_at is not None:
                self._event(task_id, result.decoding_started_at, TaskState.RUNNING,
                            rows.DECODING_BEGAN)  # fmt: skip
            self._event(task_id, now, TaskState.COMPLETED, None)
            return True

    def fail(
        self, task_id: str, token: str, error: str, *, retry_at: float | None, now: float
    ) -> Task | None:
        with self._lock:
            task = self._leased(task_id, token)
            if task is None:
                return None
            task.error = error
            retry = retry_at is not None and not task.cancel_requested
            if retry and task.attempts < task.max_attempts:
                _requeue(task)
                task.not_before = retry_at or 0.0
                self._event(task_id, now, TaskState.QUEUED, rows.retry_detail(error))
            else:
                task.state, task.finished_at = TaskState.FAILED, now
                _drop_lease(task)
                self._event(task_id, now, TaskState.FAILED, error)
            return replace(task)

    def unclaim(self, task_id: str, token: str, *, reason: str, now: float) -> Task | None:
        with self._lock:
            task = self._leased(task_id, token)
            if task is None:
                return None
            task.attempts -= 1
            if task.attempts == 0:
                task.started_at = None
            if task.cancel_requested:
                task.state, task.finished_at = TaskState.CANCELLED, now
                _drop_lease(task)
                self._event(task_id, now, TaskState.CANCELLED, rows.CANCELLED_UNCLAIMED)
            else:
                _requeue(task)
                task.wait_reason = reason
                self._event(task_id, now, TaskState.QUEUED, rows.unclaimed_detail(reason))
            return replace(task)

    def cancels_requested(self, *, node: str) -> set[str]:
        with self._lock:
            return {
                t.id
                for t in self._tasks.values()
                if t.state == TaskState.RUNNING and t.node == node and t.cancel_requested
            }

    def cancel(self, task_id: str, *, now: float) -> Task | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None
            if task.state == TaskState.QUEUED:
                task.state, task.finished_at, task.wait_reason = TaskState.CANCELLED, now, None
                self._event(task_id, now, TaskState.CANCELLED, rows.CANCELLED_QUEUED)
            elif task.state == TaskState.RUNNING and not task.cancel_requested:
                task.cancel_requested = True
                self._event(task_id, now, TaskState.RUNNING, rows.CANCEL_REQUESTED)
            return replace(task)

    def finish_cancel(self, task_id: str, token: str, *, now: float) -> bool:
        with self._lock:
            task = self._leased(task_id, token)
            if task is None:
                return False
            task.state, task.finished_at = TaskState.CANCELLED, now
            _drop_lease(task)
            self._event(task_id, now, TaskState.CANCELLED, rows.CANCELLED_RUNNING)
            return True

    def set_wait_reasons(self, reasons: dict[str, str | None]) -> None:
        with self._lock:
            for task_id, reason in reasons.items():
                task = self._tasks.get(task_id)
                if task is not None and task.state == TaskState.QUEUED:
                    task.wait_reason = reason

    def fail_queued(self, task_id: str, error: str, *, now: float) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.state != TaskState.QUEUED:
                return False
            task.state, task.error, task.finished_at = TaskState.FAILED, error, now
            task.wait_reason = None
            self._event(task_id, now, TaskState.FAILED, error)
            return True

    def recover_expired(self, *, now: float) -> list[str]:
        with self._lock:
            expired = [
                t
                for t in sorted(self._tasks.values(), key=lambda t: self._order[t.id])
                if t.state == TaskState.RUNNING
                and t.lease_expires_at is not None
                and t.lease_expires_at < now
            ]
            # The same order as the SQL stores: cancelled, then failed, then requeued.
            groups = [
                [t for t in expired if t.cancel_requested],
                [t for t in expired if not t.cancel_requested and t.attempts >= t.max_attempts],
                [t for t in expired if not t.cancel_requested and t.attempts < t.max_attempts],
            ]
            for task in groups[0]:
                task.state, task.finished_at = TaskState.CANCELLED, now
                _drop_lease(task)
                self._event(task.id, now, TaskState.CANCELLED, rows.LEASE_EXPIRED_CANCELLED)
            for task in groups[1]:
                task.state, task.finished_at = TaskState.FAILED, now
                task.error = rows.exhausted_error(task.attempts, task.max_attempts)
                _drop_lease(task)
                self._event(task.id, now, TaskState.FAILED, task.error)
            for task in groups[2]:
                _requeue(task)
                self._event(task.id, now, TaskState.QUEUED, rows.LEASE_EXPIRED)
            return [t.id for group in groups for t in group]

    def prune(self, *, finished_before: float) -> list[Task]:
        with self._lock:
            old = [
                t
                for t in self._tasks.values()
                if t.state.is_final
                and t.finished_at is not None
                and t.finished_at < finished_before
            ]
            for task in old:
                self._forget(task)
            for name in [n for n, r in self._nodes.items() if r.expires_at < finished_before]:
                del self._nodes[name]
            return old

    # --- nodes ----------------------------------------------------------------------------------
    def heartbeat_node(self, node: NodeRecord) -> None:
        with self._lock:
            self._nodes[node.name] = node

    def nodes(self, *, now: float) -> list[NodeRecord]:
        with self._lock:
            return [self._nodes[n] for n in sorted(self._nodes) if self._nodes[n].expires_at >= now]

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._nodes.pop(name, None)

    def _forget(self, task: Task) -> None:
        del self._tasks[task.id], self._order[task.id], self._events[task.id]
        self._results.pop(task.id, None)
        if task.idempotency_key is not None:
            self._keys.pop(task.idempotency_key, None)

    # --- calibration --------------------------------------------------------------------------
    def add_sample(self, sample: CalibrationSample) -> None:
        with self._lock:
            self._samples.setdefault(sample.key, []).append((next(self._seq), sample))

    def samples(self, key: ProfileKey, *, limit: int) -> list[CalibrationSample]:
        with self._lock:
            found = list(self._samples.get(key, []))
        found.sort(key=lambda pair: (pair[1].measured_at, pair[0]), reverse=True)
        return [sample for _, sample in found[:limit]]

    def all_samples(self, *, per_key_limit: int) -> Iterator[CalibrationSample]:
        with self._lock:
            keys = sorted(self._samples, key=_key_order)
        found = [s for key in keys for s in self.samples(key, limit=per_key_limit)]
        return iter(found)

    def close(self) -> None:
        """Nothing to release: the data lives as long as the object."""


def _new_task(task_id: str, new: NewTask, now: float) -> Task:
    return Task(
        id=task_id,
        state=TaskState.QUEUED,
        priority=new.priority,
        options=new.options,
        audio_path=new.audio_path,
        audio_seconds=new.audio_seconds,
        audio_format=new.audio_format,
        created_at=now,
        original_filename=new.original_filename,
        idempotency_key=new.idempotency_key,
        max_attempts=new.max_attempts,
    )


def _drop_lease(task: Task) -> None:
    task.lease_token, task.lease_expires_at = None, None


def _requeue(task: Task) -> None:
    task.state, task.progress = TaskState.QUEUED, 0.0
    task.node, task.gpu_index, task.gpu_uuid = None, None, None
    _drop_lease(task)


def _key_order(key: ProfileKey) -> tuple[str, str, str, str, int, int]:
    return (key.gpu_name, key.engine, key.model, key.compute_type, key.batch_size, key.beam_size)
