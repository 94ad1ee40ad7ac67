"""The batched model's own rules: a task's gpuscribe priority reaches the continuous batch the
right way round (gpuscribe runs lower values sooner, Priority.URGENT = 0; the batcher admits
higher numbers first). The batcher's ordering itself is tested in test_batched_batcher.py, with
these mapped priorities."""

from __future__ import annotations

from gpuscribe.domain import Priority
from gpuscribe.workers.engines.batched.model import batch_priority


def test_urgent_maps_to_the_batchers_highest_priority() -> None:
    mapped = {p: batch_priority(p) for p in Priority}
    assert mapped == {Priority.URGENT: 3, Priority.HIGH: 2, Priority.NORMAL: 1, Priority.LOW: 0}
    # the batcher admits higher numbers first: that order is gpuscribe's
    assert sorted(Priority, key=batch_priority, reverse=True) == sorted(Priority)
