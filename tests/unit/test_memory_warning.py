"""memory.warning: when an episode of high memory begins, goes on and ends."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuscribe.config import GIB, Settings
from gpuscribe.memory.warning import (
    MemorySample,
    MemoryWatch,
    WarningCondition,
    WarningThresholds,
    began,
    ended,
    observe,
)

LIMITS = WarningThresholds(
    warn_fraction=0.85, clear_margin=0.05, foreign_growth_bytes=GIB, clear_seconds=10.0
)
TOTAL = 24 * GIB


def sample(
    at: float,
    used_gib: float,
    foreign_gib: float = 0.0,
    tasks: int = 1,
    admitted_gib: float | None = None,
) -> MemorySample:
    """`admitted_gib` defaults to all that is used: gpuscribe's share is then never judged
    below what the device reports."""
    admitted = used_gib if admitted_gib is None else admitted_gib
    return MemorySample(
        at, TOTAL, int(used_gib * GIB), int(foreign_gib * GIB), tasks, int(admitted * GIB)
    )


def run(samples: list[MemorySample], watch: MemoryWatch | None = None) -> list[MemoryWatch]:
    """The watch after each sample."""
    states = []
    current = watch or MemoryWatch()
    for s in samples:
        current = observe(current, s, LIMITS)
        states.append(current)
    return states


def test_used_memory_past_the_level_begins_an_episode_once() -> None:
    level_gib = 0.85 * 24  # 20.4 GiB
    states = run([sample(0, 10), sample(1, level_gib + 0.1), sample(2, 23), sample(3, 21)])
    assert states[0].warning is None
    warning = states[1].warning
    assert warning is not None and warning.condition is WarningCondition.USED_HIGH
    assert warning.since == 1
    assert "passed the warning level of 85%" in warning.message
    assert [began(a, b) for a, b in zip([MemoryWatch(), *states], states, strict=False)] == [
        False, True, False, False,
    ]  # fmt: skip
    assert states[3].warning == warning  # the episode keeps its first figures


def test_used_memory_exactly_at_the_level_does_not_warn() -> None:
    at_level = MemorySample(0, TOTAL, int(0.85 * TOTAL), 0, 1, int(0.85 * TOTAL))
    assert observe(MemoryWatch(), at_level, LIMITS).warning is None


def test_an_episode_ends_only_after_the_device_stays_calm_below_the_margin() -> None:
    warned = run([sample(0, 21)])[-1]
    # 20 GiB is under the level (20.4) but above the level less the margin (19.2): not calm.
    hovering = run([sample(1, 20), sample(30, 20)], warned)
    assert all(s.warning is not None and s.calm_since is None for s in hovering)
    calm = run([sample(31, 15), sample(35, 15), sample(40.9, 15), sample(41, 15)], hovering[-1])
    assert [s.warning is not None for s in calm] == [True, True, True, False]
    assert calm[0].calm_since == 31
    assert ended(calm[2], calm[3])


def test_trouble_during_the_calm_restarts_the_count() -> None:
    warned = run([sample(0, 21)])[-1]
    states = run(
        [sample(1, 10), sample(8, 21), sample(9, 10), sample(18, 10), sample(19, 10)], warned
    )
    assert [s.warning is not None for s in states] == [True, True, True, True, False]
    assert states[1].calm_since is None and states[2].calm_since == 9


def test_other_processes_growing_while_tasks_run_begin_an_episode() -> None:
    states = run([sample(0, 8, foreign_gib=2), sample(1, 8.5, 2.5), sample(2, 9.2, 3.2)])
    assert states[0].foreign_baseline == 2 * GIB
    assert states[1].warning is None  # 0.5 GiB of growth: within the 1 GiB allowed
    warning = states[2].warning
    assert warning is not None and warning.condition is WarningCondition.FOREIGN_GROWTH
    assert "grew by 1.20 GiB (to 3.20 GiB) while 1 task(s) ran" in warning.message


def test_growth_counts_from_the_least_that_other_processes_held_while_tasks_ran() -> None:
    states = run([sample(0, 8, 3), sample(1, 6, 1), sample(2, 7.1, 2.1)])
    assert states[1].foreign_baseline == GIB
    assert states[2].warning is not None


def test_growth_while_nothing_runs_does_not_warn_and_resets_the_baseline() -> None:
    states = run([sample(0, 1, 0, tasks=0), sample(1, 6, 5, tasks=0), sample(2, 6.5, 5, tasks=1)])
    assert all(s.warning is None for s in states)
    assert states[1].foreign_baseline is None and states[2].foreign_baseline == 5 * GIB


def test_a_growth_episode_ends_when_the_tasks_end_or_the_growth_goes() -> None:
    warned = run([sample(0, 5, 0), sample(1, 7, 2)])[-1]
    assert warned.warning is not None
    gone = run([sample(2, 5.5, 0.5), sample(12, 5.5, 0.5)], warned)
    assert gone[-1].warning is None
    idle = run([sample(2, 2, 2, tasks=0), sample(12, 2, 2, tasks=0)], warned)
    assert idle[-1].warning is None and idle[-1].foreign_baseline is None


def test_without_knowing_which_memory_is_whose_only_the_used_level_warns() -> None:
    unknown = [MemorySample(t, TOTAL, int((5 + t) * GIB), None, 1, 0) for t in range(5)]
    states = run([sample(-1, 5, 0), *unknown])
    assert all(s.warning is None and s.foreign_baseline is None for s in states[1:])
    high = observe(states[-1], MemorySample(6, TOTAL, 21 * GIB, None, 1, 0), LIMITS)
    assert high.warning is not None and high.warning.condition is WarningCondition.USED_HIGH


def test_memory_a_worker_keeps_cached_beyond_its_admission_neither_warns_nor_keeps_a_warning() -> (
    None
):
    # The worker's allocator still holds 22 GiB after its tasks ended; the ledger admits 12 GiB
    # (its context and resident model) and other processes hold 1 GiB.
    idle = sample(0, 23, foreign_gib=1, tasks=0, admitted_gib=12)
    assert observe(MemoryWatch(), idle, LIMITS).warning is None
    warned = run([sample(0, 21, foreign_gib=1, admitted_gib=20)])[-1]
    assert warned.warning is not None
    after = run([sample(1, 23, 1, tasks=0, admitted_gib=12), sample(11, 23, 1, 0, 12)], warned)
    assert after[-1].warning is None  # calm: it will reuse its cache for the next tasks
    crowded = sample(20, 23, foreign_gib=9, tasks=0, admitted_gib=12)  # 21 GiB by that count
    assert observe(after[-1], crowded, LIMITS).warning is not None


def test_an_ended_episode_can_begin_again() -> None:
    states = run([sample(0, 21), sample(1, 10), sample(11, 10), sample(12, 22)])
    assert [s.warning is not None for s in states] == [True, True, False, True]
    second = states[3].warning
    assert second is not None and second.since == 12


def test_thresholds_come_from_the_settings() -> None:
    limits = WarningThresholds.of(Settings())
    assert limits.warn_fraction == pytest.approx(0.85)  # 0.05 below the default cap of 0.9
    assert limits.foreign_growth_bytes == GIB and limits.clear_seconds == 10.0
    lower_cap = WarningThresholds.of(replace(Settings(), max_memory_utilization=0.7))
    assert lower_cap.warn_fraction == pytest.approx(0.65)
    explicit = WarningThresholds.of(replace(Settings(), memory_warning_fraction=0.5))
    assert explicit.warn_fraction == 0.5
