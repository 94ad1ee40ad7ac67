"""The tasks this node runs right now, with what was admitted for each."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from gpuscribe.domain import Priority
from gpuscribe.memory.types import MemoryEstimate, ProfileKey


@dataclass(slots=True)
class RunningTask:
    task_id: str
    token: str
    device_uuid: str
    key: ProfileKey
    estimate: MemoryEstimate
    created_at: float
    started_at: float
    cancel_sent_at: float | None = None
    killed: bool = False
    stop_reason: str | None = None  # "timeout" or "lease lost"; None for a client's cancel
    progress: float | None = None  # reported by the worker, not yet written (Upkeep.flush_progress)
    priority: Priority = Priority.NORMAL  # as queued (a metrics label)


class RunningTasks:
    """Thread-safe registry: the scheduler adds, worker events and upkeep remove."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, RunningTask] = {}

    def add(self, task: RunningTask) -> None:
        with self._lock:
            self._tasks[task.task_id] = task

    def get(self, task_id: str) -> RunningTask | None:
        with self._lock:
            return self._tasks.get(task_id)

    def pop(self, task_id: str, token: str) -> RunningTask | None:
        """Remove the task if the event names its current lease; stale events remove nothing."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.token != token:
                return None
            return self._tasks.pop(task_id)

    def all(self) -> list[RunningTask]:
        with self._lock:
            return list(self._tasks.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)
