"""Placement: the least-admitted device among those the task fits on; never a default."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuscribe.memory.ledger import Fit


@dataclass(frozen=True, slots=True)
class Candidate:
    uuid: str
    index: int
    fit: Fit
    admitted_bytes: int


def choose_device(fits: Sequence[Candidate]) -> Candidate | None:
    """The fitting device with the least admitted memory (ties: lowest index), or None when the
    task fits nowhere (the design's sketch returned GPU 0 then: docs/DESIGN.md, Placement)."""
    fitting = [c for c in fits if c.fit.ok]
    if not fitting:
        return None
    return min(fitting, key=lambda c: (c.admitted_bytes, c.index))


def wait_reason(fits: Sequence[Candidate]) -> str:
    """Why a task waits: each device's reason, in device order."""
    reasons = [c.fit.reason for c in sorted(fits, key=lambda c: c.index) if not c.fit.ok]
    return "; ".join(reasons) if reasons else "no device"
