"""One scheduling pass over a snapshot of the queue: pure, it changes none of its inputs.

Tasks are taken in priority order (with aging). Each is placed (`scheduling.placement`) on the
least-admitted healthy device it fits on, charged to a planning copy of that device's ledger so
that later tasks of the same pass see earlier ones. The caller charges the real ledgers with
what it then claims. A task that does not fit now waits, and smaller tasks behind it may use the
room it cannot (backfill) -- until a blocked task has waited longer than `starvation_seconds`:
then nothing behind it is placed in this pass, so the room it needs frees up for it. A task
that could not fit on any healthy device even if that device were empty is impossible.

Within a pass the planning ledgers only gain charges, so a task shape that fitted nowhere stays
unplaceable for the rest of the pass: such shapes are remembered, which keeps a long blocked
queue cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuscribe.domain import Task
from gpuscribe.memory.ledger import DeviceLedger
from gpuscribe.memory.types import MemoryEstimate, ModelKey, gib_text
from gpuscribe.scheduling.placement import LeastAdmitted
from gpuscribe.scheduling.priority import order_queue
from gpuscribe.telemetry.base import DeviceKind

EstimateFor = Callable[[Task, "DeviceState"], MemoryEstimate]


@dataclass(slots=True)
class DeviceState:
    ledger: DeviceLedger  # read only: the pass plans on a copy of it
    name: str
    kind: DeviceKind
    foreign_bytes: int  # what processes outside gpuscribe hold, read fresh
    healthy: bool
    warning: str | None = None  # a memory warning episode (memory/warning.py): admit nothing


@dataclass(frozen=True, slots=True)
class Placement:
    task_id: str
    device_uuid: str
    device_index: int
    estimate: MemoryEstimate
    model: ModelKey  # what the real ledger's admission evicts is its own decision, not the plan's


@dataclass(slots=True)
class Plan:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # task id -> why it waits
    impossible: dict[str, str] = field(default_factory=dict)  # task id -> why it never fits


@dataclass(frozen=True, slots=True)
class _Group:
    """Devices of one GPU model and kind: they share every estimate."""

    name: str
    kind: DeviceKind
    slots: tuple[int, ...]
    largest_limit: int


def plan(
    queue: Sequence[Task],
    devices: Sequence[DeviceState],
    estimate_for: EstimateFor,
    *,
    now: float,
    aging_seconds: float,
    starvation_seconds: float,
) -> Plan:
    result = Plan()
    planner = _Pass(devices, estimate_for)
    starving: Task | None = None
    for task in order_queue(queue, now=now, aging_seconds=aging_seconds):
        if task.not_before > now:
            result.waiting[task.id] = f"retrying in {task.not_before - now:.0f} s"
        elif starving is not None:
            result.waiting[task.id] = (
                f"waiting behind task {starving.id}, queued for more than "
                f"{starvation_seconds:g} s, which needs the room first"
            )
        else:
            planner.place(task, result)
            if task.id in result.waiting and now - task.created_at > starvation_seconds:
                starving = task
    return result


def _closed_reason(device: DeviceState) -> str | None:
    """Why a device admits nothing in this pass (None: it may)."""
    if not device.healthy:
        return f"GPU {device.ledger.index}: unavailable"
    if device.warning is not None:
        return f"GPU {device.ledger.index}: memory warning, {device.warning}"
    return None


class _Pass:
    def __init__(self, devices: Sequence[DeviceState], estimate_for: EstimateFor) -> None:
        self._devices = list(devices)
        self._estimate_for = estimate_for
        self._estimates: dict[tuple[Any, ...], MemoryEstimate] = {}
        self._blocked: dict[tuple[Any, ...], str] = {}  # task shape -> why it fits nowhere
        self._groups = self._group()
        self._group_of = [0] * len(self._devices)  # slot -> position in self._groups
        for position, group in enumerate(self._groups):
            for slot in group.slots:
                self._group_of[slot] = position
        self._ledgers = [device.ledger.copy() for device in self._devices]
        self._placement = LeastAdmitted(
            self._ledgers,
            [device.foreign_bytes for device in self._devices],
            {
                slot: reason
                for slot, device in enumerate(self._devices)
                if (reason := _closed_reason(device)) is not None
            },
        )

    def _group(self) -> list[_Group]:
        slots: dict[tuple[str, DeviceKind], list[int]] = {}
        for slot, device in enumerate(self._devices):
            if device.healthy:
                slots.setdefault((device.name, device.kind), []).append(slot)
        return [
            _Group(name, kind, tuple(s), max(self._devices[i].ledger.limit_bytes for i in s))
            for (name, kind), s in slots.items()
        ]

    def place(self, task: Task, result: Plan) -> None:
        """Place one task, or record why it waits or why it can never run."""
        if not self._groups:
            result.waiting[task.id] = "no healthy device"
            return
        estimates = tuple(self._estimate(task, group) for group in self._groups)
        if all(
            e.total_bytes > g.largest_limit for e, g in zip(estimates, self._groups, strict=True)
        ):
            result.impossible[task.id] = self._impossible(estimates)
            return
        options = task.options
        model = ModelKey(options.engine, options.model, options.compute_type)
        shape = (model, estimates)
        blocked = self._blocked.get(shape)
        if blocked is None:
            placement = self._admit(task, model, estimates)
            if isinstance(placement, Placement):
                result.placements.append(placement)
                return
            blocked = self._blocked[shape] = placement
        result.waiting[task.id] = blocked

    def _estimate(self, task: Task, group: _Group) -> MemoryEstimate:
        """Cached per memory-relevant options, audio length and GPU model. A task tried before
        may carry a raised estimate (after an out-of-memory), so it is never cached."""
        if task.attempts:
            return self._estimate_for(task, self._devices[group.slots[0]])
        o = task.options
        key = (
            o.engine,
            o.model,
            o.compute_type,
            o.batch_size,
            o.beam_size,
            task.audio_seconds,
            group.name,
            group.kind,
        )
        found = self._estimates.get(key)
        if found is None:
            found = self._estimates[key] = self._estimate_for(task, self._devices[group.slots[0]])
        return found

    def _admit(
        self, task: Task, model: ModelKey, estimates: tuple[MemoryEstimate, ...]
    ) -> Placement | str:
        chosen = self._placement.admit(task.id, model, lambda slot: estimates[self._group_of[slot]])
        if isinstance(chosen, str):
            return chosen
        slot, _ = chosen  # the planning copy's fit: the real ledger decides again when charged
        ledger = self._ledgers[slot]
        estimate = estimates[self._group_of[slot]]
        return Placement(task.id, ledger.uuid, ledger.index, estimate, model)

    def _impossible(self, estimates: tuple[MemoryEstimate, ...]) -> str:
        need = min(e.total_bytes for e in estimates)
        largest = max(g.largest_limit for g in self._groups)
        return (
            f"needs {gib_text(need)} (context + weights + working), more than the largest GPU "
            f"cap of {gib_text(largest)} even with nothing else running"
        )
