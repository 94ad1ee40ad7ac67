"""Queue order: priority as an integer (never as a string), raised by waiting (aging)."""

from __future__ import annotations

from collections.abc import Sequence

from gpuscribe.domain import Priority, Task


def effective_rank(priority: Priority, waited_seconds: float, aging_seconds: float) -> float:
    """Priority value minus one level per `aging_seconds` waited, floored at 0 (urgent)."""
    rank = int(priority) - max(0.0, waited_seconds) / aging_seconds
    return rank if rank > 0.0 else 0.0


def order_queue(tasks: Sequence[Task], *, now: float, aging_seconds: float) -> list[Task]:
    """Sooner first: by effective rank, then age, then the original priority (two tasks of
    equal wait that both aged to urgent keep their order), then id."""

    def key(task: Task) -> tuple[float, float, int, str]:
        rank = effective_rank(task.priority, now - task.created_at, aging_seconds)
        return rank, task.created_at, int(task.priority), task.id

    return sorted(tasks, key=key)
