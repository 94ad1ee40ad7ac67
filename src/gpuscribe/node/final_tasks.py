"""The node's one owner of "this task became final": whoever made a task final here (a worker's
event, a cancel, a task that fits nowhere, an expired lease) signals it, and whoever waits for
that task (the OpenAI routes) is told at once instead of reading the store over and over.

Only tasks someone watches have an entry, and an entry goes when its last watcher does: the
registry holds what is waited for now, not every task that ever finished. A signal for a task
nobody watches is dropped (a watcher registers before it first reads the task, so it misses
nothing). A signal means "read the task again": a spurious one costs a read, never a wrong
answer. A task that finishes on another node of a cluster is signalled there, not here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

Notify = Callable[[], None]


class FinalTasks:
    """Thread-safe registry of who watches which task."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, list[Notify]] = {}

    @contextmanager
    def watch(self, task_id: str, notify: Notify) -> Iterator[None]:
        """Call `notify` each time the task is signalled final while the block runs. It is
        called on the signalling thread (a worker's event thread, a scheduler pass, a request's
        thread): it must return at once, e.g. set an event."""
        with self._lock:
            self._watchers.setdefault(task_id, []).append(notify)
        try:
            yield
        finally:
            with self._lock:
                watchers = self._watchers[task_id]
                watchers.remove(notify)
                if not watchers:
                    del self._watchers[task_id]

    def signal(self, task_id: str) -> None:
        """The task became final on this node (or may have: its watchers read it again)."""
        with self._lock:
            watchers = list(self._watchers.get(task_id, ()))
        for notify in watchers:  # outside the lock: a watcher may leave meanwhile
            try:
                notify()
            except Exception:
                log.exception("a watcher of task %s failed to take its signal", task_id)

    def signal_all(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self.signal(task_id)

    def __len__(self) -> int:
        """The number of tasks watched now."""
        with self._lock:
            return len(self._watchers)
