"""Early warning of a GPU's memory running high: the episodes of one device, from its samples.

An episode begins when the memory the device reports in use (every process's; gpuscribe's own
counted at most at what its ledger admitted, see `judged_used_bytes`) passes the warning level,
which sits below the cap, or when the memory that processes outside gpuscribe hold grows
by more than a set amount while gpuscribe's tasks run there (those tasks were admitted on what
the other processes held before). While an episode lasts, the node admits nothing more onto the
device. It ends once the device has stayed calm for a set time: used memory below the warning
level less a margin, and no such growth. The margin and the time keep a device that hovers at
the level from flapping between warned and not.

Pure: the node feeds it fresh readings (`node.upkeep`) and acts on what it returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from gpuscribe.config import Settings
from gpuscribe.memory.types import gib_text


class WarningCondition(enum.StrEnum):
    USED_HIGH = "used_high"  # used memory (every process) passed the warning level
    FOREIGN_GROWTH = "foreign_growth"  # other processes' memory grew while tasks ran


@dataclass(frozen=True, slots=True)
class WarningThresholds:
    warn_fraction: float  # of the device's total memory
    clear_margin: float  # calm means used below (warn_fraction - clear_margin) x total
    foreign_growth_bytes: int  # growth of other processes' memory that warns while tasks run
    clear_seconds: float  # how long a device stays calm before its episode ends

    @classmethod
    def of(cls, settings: Settings) -> WarningThresholds:
        return cls(
            warn_fraction=settings.memory_warning_level,
            clear_margin=settings.memory_warning_clear_margin,
            foreign_growth_bytes=settings.memory_warning_foreign_growth_bytes,
            clear_seconds=settings.memory_warning_clear_seconds,
        )


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One fresh reading of a device, with what gpuscribe runs there."""

    at: float  # seconds since the epoch
    total_bytes: int
    used_bytes: int  # every process's, as the device reports it
    # What processes outside gpuscribe hold; None where the device does not tell gpuscribe's
    # memory from theirs (it lists none of gpuscribe's workers: a container's own process ids,
    # a driver that attributes no memory): the growth rule then has nothing to go on.
    foreign_bytes: int | None
    tasks_running: int
    admitted_bytes: int  # what gpuscribe's ledger charges on the device


def judged_used_bytes(sample: MemorySample) -> int:
    """Used memory as the warning judges it: gpuscribe's share counts at most at what its ledger
    admitted. A worker's allocator keeps memory its tasks freed (the device counts it as used)
    and reuses it for gpuscribe's next tasks: it crowds nobody, and it would not shrink while
    the device waits for calm, which would close the device for good."""
    if sample.foreign_bytes is None:
        return sample.used_bytes
    return min(sample.used_bytes, sample.foreign_bytes + sample.admitted_bytes)


@dataclass(frozen=True, slots=True)
class MemoryWarning:
    """An episode: which condition began it, when, and the figures then."""

    condition: WarningCondition
    since: float
    message: str


@dataclass(frozen=True, slots=True)
class MemoryWatch:
    """What the watch of one device remembers between samples."""

    warning: MemoryWarning | None = None
    # The least that other processes held since gpuscribe's tasks began running on the device;
    # None while none runs (growth then harms no admitted task: admission reads it fresh).
    foreign_baseline: int | None = None
    calm_since: float | None = None  # during an episode: since when the device has been calm


def observe(watch: MemoryWatch, sample: MemorySample, limits: WarningThresholds) -> MemoryWatch:
    """The watch after one more sample: an episode begins, goes on, or ends."""
    baseline = _baseline(watch.foreign_baseline, sample)
    growth = (
        0 if baseline is None or sample.foreign_bytes is None else sample.foreign_bytes - baseline
    )
    watch = replace(watch, foreign_baseline=baseline)
    if watch.warning is None:
        trouble = _trouble(sample, growth, limits)
        return watch if trouble is None else replace(watch, warning=trouble, calm_since=None)
    if not _calm(sample, growth, limits):
        return replace(watch, calm_since=None)
    calm_since = sample.at if watch.calm_since is None else watch.calm_since
    if sample.at - calm_since >= limits.clear_seconds:
        return replace(watch, warning=None, calm_since=None)
    return replace(watch, calm_since=calm_since)


def began(before: MemoryWatch, after: MemoryWatch) -> bool:
    return before.warning is None and after.warning is not None


def ended(before: MemoryWatch, after: MemoryWatch) -> bool:
    return before.warning is not None and after.warning is None


def _baseline(previous: int | None, sample: MemorySample) -> int | None:
    foreign = sample.foreign_bytes
    if sample.tasks_running == 0 or foreign is None:
        return None
    return foreign if previous is None else min(previous, foreign)


def _trouble(sample: MemorySample, growth: int, limits: WarningThresholds) -> MemoryWarning | None:
    used = judged_used_bytes(sample)
    if used > limits.warn_fraction * sample.total_bytes:
        return MemoryWarning(
            WarningCondition.USED_HIGH,
            sample.at,
            f"memory use {gib_text(used, 2)} of {gib_text(sample.total_bytes, 2)} "
            f"({100 * used / sample.total_bytes:.1f}%) passed the warning level of "
            f"{100 * limits.warn_fraction:.0f}%",
        )
    if growth > limits.foreign_growth_bytes:
        foreign = sample.foreign_bytes or 0
        return MemoryWarning(
            WarningCondition.FOREIGN_GROWTH,
            sample.at,
            f"other processes' memory grew by {gib_text(growth, 2)} (to {gib_text(foreign, 2)}) "
            f"while {sample.tasks_running} task(s) ran, more than the "
            f"{gib_text(limits.foreign_growth_bytes, 2)} allowed",
        )
    return None


def _calm(sample: MemorySample, growth: int, limits: WarningThresholds) -> bool:
    level = (limits.warn_fraction - limits.clear_margin) * sample.total_bytes
    return judged_used_bytes(sample) <= level and growth <= limits.foreign_growth_bytes
