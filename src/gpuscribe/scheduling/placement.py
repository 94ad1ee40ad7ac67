"""Placement: a task goes to the least-admitted device that admits it (ties: the lowest index),
never to a default (docs/DESIGN.md, Placement); when none does, the wait reason says why,
device by device."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence

from gpuscribe.memory.ledger import DeviceLedger, Fit, NotAdmitted
from gpuscribe.memory.types import MemoryEstimate, ModelKey

MAX_REASONS_SHOWN = 8  # a wait reason names this many devices at most (64-GPU nodes exist)
_Entry = tuple[int, int, int]  # (admitted bytes, device index, slot)


def wait_reason(reasons: Mapping[int, str]) -> str:
    """Why a task waits: each device's reason (keyed by device index), in device order."""
    ordered = [reasons[index] for index in sorted(reasons)]
    if not ordered:
        return "no device"
    text = "; ".join(ordered[:MAX_REASONS_SHOWN])
    if len(ordered) > MAX_REASONS_SHOWN:
        text += f"; and {len(ordered) - MAX_REASONS_SHOWN} more GPUs"
    return text


class LeastAdmitted:
    """The devices of one planning pass, least admitted first. `admit` tries them in that order
    and charges the first that admits the task, so later tasks see earlier ones; the ledgers
    must be planning copies (`DeviceLedger.copy`): what they are charged is a plan, not real.
    A device whose task slots are all taken is closed for the rest of the pass, as is one
    given in `closed` (slot -> why)."""

    def __init__(
        self, ledgers: Sequence[DeviceLedger], foreign: Sequence[int], closed: Mapping[int, str]
    ) -> None:
        self._ledgers = ledgers
        self._foreign = foreign  # per slot: what processes outside gpuscribe hold
        self._closed = dict(closed)
        self._heap = [
            (ledger.admitted_bytes, ledger.index, slot)
            for slot, ledger in enumerate(ledgers)
            if slot not in self._closed
        ]
        heapq.heapify(self._heap)

    def admit(
        self, task_id: str, model: ModelKey, estimate_on: Callable[[int], MemoryEstimate]
    ) -> tuple[int, Fit] | str:
        """(the slot that admitted the task, its fit), or why no device did.
        `estimate_on(slot)`: what the task needs on that device."""
        tried: list[_Entry] = []
        reasons: dict[int, str] = {}
        chosen: tuple[int, Fit] | None = None
        while self._heap and chosen is None:
            entry = heapq.heappop(self._heap)
            slot = entry[2]
            ledger = self._ledgers[slot]
            try:
                fit = ledger.admit(
                    task_id, estimate_on(slot), model, foreign_bytes=self._foreign[slot]
                )
            except NotAdmitted as refused:
                self._refused(entry, refused.fit, tried, reasons)
                continue
            chosen = (slot, fit)
            tried.append((ledger.admitted_bytes, ledger.index, slot))
        for entry in tried:
            heapq.heappush(self._heap, entry)
        if chosen is not None:
            return chosen
        reasons.update(self._closed)
        return wait_reason({self._ledgers[slot].index: r for slot, r in reasons.items()})

    def _refused(
        self, entry: _Entry, fit: Fit, tried: list[_Entry], reasons: dict[int, str]
    ) -> None:
        slot = entry[2]
        ledger = self._ledgers[slot]
        if ledger.running_tasks >= ledger.max_tasks:
            self._closed[slot] = fit.reason  # full for the rest of the pass
        else:
            reasons[slot] = fit.reason
            tried.append(entry)
