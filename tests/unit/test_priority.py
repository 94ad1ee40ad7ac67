import pytest

from gpuscribe.domain import Priority, Task, TaskState, TranscriptionOptions
from gpuscribe.scheduling.priority import effective_rank, order_queue


def task(tid: str, priority: Priority, created_at: float) -> Task:
    return Task(
        tid, TaskState.QUEUED, priority, TranscriptionOptions(), "a.wav", 10.0, "wav", created_at
    )


def test_effective_rank() -> None:
    assert effective_rank(Priority.LOW, 0, 100) == 3
    assert effective_rank(Priority.LOW, 150, 100) == pytest.approx(1.5)
    assert effective_rank(Priority.HIGH, 10_000, 100) == 0
    assert effective_rank(Priority.URGENT, 0, 100) == 0
    assert effective_rank(Priority.NORMAL, -5, 100) == 2  # clock skew never lowers a rank


def test_priorities_are_integers_not_strings() -> None:
    """The design's sketch sorted 'high' < 'low' < 'normal' (docs/DESIGN.md, What we changed
    and why); low must never run before normal."""
    tasks = [
        task("l", Priority.LOW, 0),
        task("n", Priority.NORMAL, 0),
        task("h", Priority.HIGH, 0),
        task("u", Priority.URGENT, 0),
    ]
    assert [t.id for t in order_queue(tasks, now=0, aging_seconds=60)] == ["u", "h", "n", "l"]


@pytest.mark.parametrize("wait", [0, 30, 119, 200, 1000, 10_000])
def test_low_never_before_normal_at_equal_wait(wait: float) -> None:
    tasks = [task("a-low", Priority.LOW, 0), task("b-normal", Priority.NORMAL, 0)]
    ordered = order_queue(tasks, now=wait, aging_seconds=60)
    assert [t.id for t in ordered] == ["b-normal", "a-low"]


def test_aging_lifts_an_old_low_task() -> None:
    old_low = task("old", Priority.LOW, 0)
    new_normal = task("new", Priority.NORMAL, 590)
    new_high = task("high", Priority.HIGH, 599)
    ordered = order_queue([new_high, new_normal, old_low], now=600, aging_seconds=120)
    # old low: 3 - 5 -> 0; new normal ~2; new high ~1
    assert [t.id for t in ordered] == ["old", "high", "new"]


def test_ties_by_age_then_id() -> None:
    tasks = [
        task("b", Priority.NORMAL, 5),
        task("a", Priority.NORMAL, 5),
        task("c", Priority.NORMAL, 1),
    ]
    assert [t.id for t in order_queue(tasks, now=5, aging_seconds=1e9)] == ["c", "a", "b"]
