"""The store interface. Implementations: in-memory (tests), SQLite, PostgreSQL (later).

Rules every implementation keeps:
- A method returns only after its change is committed: nothing is acknowledged before that.
- A running task holds a lease (a random token and an expiry). Every update of a running task
  names the token; an update with a stale token changes nothing and returns False, so a worker
  that lost its lease can never overwrite what another attempt wrote.
- `attempts` is counted at claim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpuscribe.domain import NewTask, Priority, Task, TaskEvent, TaskState, Transcript
from gpuscribe.memory.types import CalibrationSample, ProfileKey


class QueueLimitReached(Exception):
    """`add` refused a new task: the queue already holds `max_queued` tasks."""

    def __init__(self, queued: int) -> None:
        super().__init__(f"the queue holds {queued} tasks")
        self.queued = queued


class StaleLease(Exception):
    """Raised where a caller must know that its lease is gone (the task moved on without it)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A placement the scheduler commits: task -> device, with the admitted estimate."""

    task_id: str
    node: str
    gpu_index: int
    gpu_uuid: str
    memory_estimate_bytes: int
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class QueueCounts:
    by_state: dict[str, int] = field(default_factory=dict)
    by_priority: dict[str, int] = field(default_factory=dict)  # queued tasks only


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node as the cluster sees it, renewed by the node's heartbeat. A node is live until
    `expires_at`; `devices` are its devices as `/v1/gpus` shows them (JSON objects)."""

    name: str
    role: str  # "serve" (API and workers), "api" (API only) or "worker" (workers only)
    started_at: float
    heartbeat_at: float
    expires_at: float
    devices: tuple[dict[str, Any], ...] = ()


class TaskStore(Protocol):
    # --- submission and reading -------------------------------------------------------------
    def add(self, new: NewTask, *, now: float, max_queued: int | None = None) -> tuple[Task, bool]:
        """Store a new queued task. With an idempotency key already stored, return that task
        and False instead; otherwise the new task and True. With `max_queued`, the count and
        the insert are one transaction: raise QueueLimitReached rather than exceed it."""
        ...

    def get(self, task_id: str) -> Task | None: ...

    def task_by_key(self, key: str) -> Task | None:
        """The task stored with this idempotency key, if any."""
        ...

    def list_tasks(self, *, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        """Newest first."""
        ...

    def queued(self, *, now: float, limit: int, priority: Priority | None = None) -> list[Task]:
        """Queued tasks whose `not_before` has passed, oldest first (the scheduler orders them
        by effective priority itself); with `priority`, of that priority only."""
        ...

    def count_queued(self) -> int: ...

    def counts(self) -> QueueCounts: ...

    def history(self, task_id: str) -> list[TaskEvent]: ...

    def result(self, task_id: str) -> Transcript | None: ...

    # --- the scheduler and workers -----------------------------------------------------------
    def claim(self, claim: Claim, *, now: float) -> Task | None:
        """Queued -> running under a new lease (BEGIN IMMEDIATE on SQLite). Counts an attempt.
        Returns None when the task is no longer queued (cancelled, claimed by another node)."""
        ...

    def claim_window(
        self,
        *,
        now: float,
        limit: int,
        decide: Callable[[list[Task]], Sequence[Claim]],
    ) -> tuple[list[Task], list[Task]]:
        """One short transaction of a scheduling pass: take the oldest `limit` ready queued
        tasks of each priority that no other node holds (PostgreSQL: FOR UPDATE SKIP LOCKED,
        so nodes scheduling at once get disjoint windows), let `decide` (no I/O) choose claims
        among them, and make those claims. Returns (the window, the tasks claimed)."""
        ...

    def renew(
        self, leases: Sequence[tuple[str, str]], *, lease_seconds: float, now: float
    ) -> set[str]:
        """Extend the leases given as (task_id, token); return the task ids whose lease is
        still held (a task whose token no longer matches has moved on)."""
        ...

    def set_progress(self, task_id: str, token: str, progress: float) -> bool: ...

    def set_progress_many(self, updates: Sequence[tuple[str, str, float]]) -> None:
        """(task_id, token, progress) for many tasks in one transaction; stale leases skipped."""
        ...

    def complete(
        self, task_id: str, token: str, result: Transcript, *, peak_bytes: int | None, now: float
    ) -> bool:
        """Running -> completed with its result, in one transaction; where the result says when
        its decoding began, the history gets that line too. False if the lease is stale."""
        ...

    def fail(
        self, task_id: str, token: str, error: str, *, retry_at: float | None, now: float
    ) -> Task | None:
        """Running -> queued again (when `retry_at` is given and attempts remain; `not_before`
        = retry_at) or failed (keeping the error and time, with the history of attempts).
        Returns the task as it now is (the caller needs no read to learn which), or None when
        the lease is stale."""
        ...

    def unclaim(self, task_id: str, token: str, *, reason: str, now: float) -> Task | None:
        """Running -> queued as if the claim had not been made: the attempt it counted is given
        back, the lease and device cleared, `wait_reason` = reason, ready at once; the history
        says why. For a node that claimed a task it then could not start (its ledger refused
        it): no failure, no attempt used. A task whose cancel was requested meanwhile is
        cancelled instead. Returns the task as it now is, or None when the lease is stale."""
        ...

    def cancel(self, task_id: str, *, now: float) -> Task | None:
        """Queued -> cancelled at once; running -> `cancel_requested` (the node stops it and
        calls `finish_cancel`). A final task is returned unchanged. None if unknown."""
        ...

    def finish_cancel(self, task_id: str, token: str, *, now: float) -> bool: ...

    def cancels_requested(self, *, node: str) -> set[str]:
        """The running tasks of `node` whose cancel was requested (on any node): the one way a
        cancel reaches the node that runs the task, read in one query per heartbeat."""
        ...

    def set_wait_reasons(self, reasons: dict[str, str | None]) -> None:
        """Why each queued task waits (None clears). Not part of the history."""
        ...

    def fail_queued(self, task_id: str, error: str, *, now: float) -> bool:
        """Queued -> failed at once (a task that can never fit anywhere)."""
        ...

    def recover_expired(self, *, now: float) -> list[str]:
        """Running tasks whose lease ran out: back to queued, or failed once `max_attempts` is
        reached. Returns their ids."""
        ...

    def prune(self, *, finished_before: float) -> list[Task]:
        """Delete final tasks finished before the time, with their results and history (and
        node records whose lease ended before it). Returns the tasks so that the caller can
        delete their audio."""
        ...

    # --- nodes ----------------------------------------------------------------------------------
    def heartbeat_node(self, node: NodeRecord) -> None:
        """Insert or replace the node's record (its heartbeat)."""
        ...

    def nodes(self, *, now: float) -> list[NodeRecord]:
        """Live nodes (lease not yet ended at `now`), by name."""
        ...

    def remove_node(self, name: str) -> None:
        """A node that stops leaves the view at once."""
        ...

    # --- calibration --------------------------------------------------------------------------
    def add_sample(self, sample: CalibrationSample) -> None: ...

    def samples(self, key: ProfileKey, *, limit: int) -> list[CalibrationSample]:
        """The newest `limit` samples of this key, newest first."""
        ...

    def all_samples(self, *, per_key_limit: int) -> Iterable[CalibrationSample]: ...

    def close(self) -> None: ...
