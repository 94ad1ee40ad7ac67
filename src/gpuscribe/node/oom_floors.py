"""Per task: the working memory an out-of-memory showed it needs. The worker events' thread
raises a floor, the scheduler's thread reads it for the task's next estimate."""

from __future__ import annotations

import threading


class OomFloors:
    """Thread-safe, like its sibling `RunningTasks`: events raise and forget, passes read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._floors: dict[str, int] = {}

    def get(self, task_id: str) -> int:
        """The task's floor (0: it never ran out of memory here)."""
        with self._lock:
            return self._floors.get(task_id, 0)

    def raise_to(self, task_id: str, floor: int) -> int:
        """Keep the larger of the floor held and `floor`; return the one now held."""
        with self._lock:
            held = self._floors[task_id] = max(floor, self._floors.get(task_id, 0))
            return held

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._floors.pop(task_id, None)

    def as_dict(self) -> dict[str, int]:
        """A copy: task id -> floor."""
        with self._lock:
            return dict(self._floors)
