"""A worker's event sink for tests: keeps every event and waits for the ones a test needs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gpuscribe.workers.messages import TaskCompleted, TaskFailed, WorkerEvent


class Events:
    def __init__(self) -> None:
        self.items: list[WorkerEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: WorkerEvent) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def mark(self) -> int:
        """Where the events so far end: `since=` this looks only at later ones."""
        with self._cond:
            return len(self.items)

    def since(self, mark: int) -> list[WorkerEvent]:
        with self._cond:
            return self.items[mark:]

    def of(self, kind: type[WorkerEvent]) -> list[WorkerEvent]:
        with self._cond:
            return [e for e in self.items if isinstance(e, kind)]

    def wait_for(
        self, match: Callable[[WorkerEvent], bool], *, since: int = 0, timeout: float = 60.0
    ) -> WorkerEvent:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.items[since:]:
                    if match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event; got {self.items[since:]}")
                self._cond.wait(left)

    def final(self, task_id: str, *, timeout: float = 60.0) -> TaskCompleted | TaskFailed:
        event = self.wait_for(
            lambda e: isinstance(e, TaskCompleted | TaskFailed) and e.task_id == task_id,
            timeout=timeout,
        )
        assert isinstance(event, TaskCompleted | TaskFailed)
        return event
