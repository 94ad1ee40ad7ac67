"""What a node's parts share, in one frozen bundle: the event handler, the scheduling pass and
upkeep each take it (and what is theirs alone) rather than the same collaborators one by one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gpuscribe.config import Settings
from gpuscribe.metrics import Metrics
from gpuscribe.node.devices import DeviceSlot
from gpuscribe.node.final_tasks import FinalTasks
from gpuscribe.node.oom_floors import OomFloors
from gpuscribe.node.running import RunningTasks
from gpuscribe.store.audio import AudioStore
from gpuscribe.store.base import TaskStore
from gpuscribe.telemetry.base import GpuTelemetry


@dataclass(frozen=True, slots=True)
class NodeContext:
    settings: Settings
    store: TaskStore
    audio: AudioStore
    telemetry: GpuTelemetry
    metrics: Metrics
    slots: Mapping[str, DeviceSlot]  # complete before any part is built
    running: RunningTasks
    oom_floors: OomFloors
    clock: Callable[[], float]
    wake: Callable[[], None]  # tells the scheduler to run a pass
    finals: FinalTasks  # told of each task that becomes final here (its waiters wake)
