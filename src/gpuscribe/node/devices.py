"""One device as a node sees it: its ledger, its worker, and what the worker told us."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuscribe.memory.ledger import DeviceLedger
from gpuscribe.telemetry.base import DeviceKind, DeviceReading
from gpuscribe.workers.base import WorkerHandle
from gpuscribe.workers.messages import DeviceRef


@dataclass(slots=True)
class DeviceSlot:
    device: DeviceRef
    ledger: DeviceLedger
    worker: WorkerHandle
    reading: DeviceReading
    ready: bool = False  # the worker reported WorkerReady since its last (re)start
    warned: bool = False  # used memory is above the warning threshold (log once per crossing)
    resident: set[str] = field(default_factory=set)

    @property
    def uuid(self) -> str:
        return self.device.uuid

    @property
    def kind(self) -> DeviceKind:
        return self.device.kind

    def foreign_bytes(self) -> int:
        """What processes outside gpuscribe hold on the device, from the latest fresh reading."""
        ours = self.reading.used_by(self.worker.pids())
        return max(0, self.reading.memory_used_bytes - ours)
