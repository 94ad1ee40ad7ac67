"""What the API reads, and the store-backed answer every backend gives.

Routes read only through `TaskReads` (a part of `Backend`), never a store: the node decides
where its answers come from. `StoreReads` is that answer for a backend that holds a `store`
(the node, the API tests' backend).
"""

from __future__ import annotations

from typing import Protocol

from gpuscribe.domain import Task, TaskEvent, TaskState, Transcript
from gpuscribe.metrics import Metrics
from gpuscribe.store.base import QueueCounts, TaskStore


class TaskReads(Protocol):
    def task(self, task_id: str) -> Task | None: ...

    def history(self, task_id: str) -> list[TaskEvent]: ...

    def result(self, task_id: str) -> Transcript | None: ...

    def tasks(self, *, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        """Newest first."""
        ...

    def counts(self) -> QueueCounts: ...

    def replay(self, idempotency_key: str) -> Task | None:
        """The task an earlier submission with this key made (a duplicate submission, counted
        as one), or None: a repeated key is answered before its body is read."""
        ...


class StoreReads:
    """`TaskReads` answered from `self.store`; duplicates counted in `self.metrics`."""

    store: TaskStore
    metrics: Metrics

    def task(self, task_id: str) -> Task | None:
        return self.store.get(task_id)

    def history(self, task_id: str) -> list[TaskEvent]:
        return self.store.history(task_id)

    def result(self, task_id: str) -> Transcript | None:
        return self.store.result(task_id)

    def tasks(self, *, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        return self.store.list_tasks(state=state, limit=limit)

    def counts(self) -> QueueCounts:
        return self.store.counts()

    def replay(self, idempotency_key: str) -> Task | None:
        task = self.store.task_by_key(idempotency_key)
        if task is not None:
            self.metrics.submissions.labels("duplicate").inc()
        return task
