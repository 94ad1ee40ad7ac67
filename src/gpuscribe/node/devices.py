"""One device as a node sees it: its ledger, its worker, and what the worker told us."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpuscribe.config import ConfigError, Settings
from gpuscribe.memory.ledger import DeviceLedger
from gpuscribe.memory.warning import MemoryWarning, MemoryWatch
from gpuscribe.metrics import device_labels
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
    watch: MemoryWatch = field(default_factory=MemoryWatch)  # memory early warning (upkeep's)
    freed_for: float | None = None  # the warning episode (its start) idle models were unloaded for

    @property
    def uuid(self) -> str:
        return self.device.uuid

    @property
    def kind(self) -> DeviceKind:
        return self.device.kind

    @property
    def memory_warning(self) -> MemoryWarning | None:
        """The memory warning episode the device is in: no task is admitted onto it meanwhile."""
        return self.watch.warning

    def metric_labels(self, hostname: str) -> tuple[str, ...]:
        return device_labels(self.kind, self.device.index, self.uuid, self.device.name, hostname)

    @property
    def attributed(self) -> bool:
        """Whether the device lists memory of gpuscribe's workers. A container's own process
        ids, or a driver that attributes no memory, leave it blind to whose memory is whose."""
        return self.reading.used_by(self.worker.pids()) > 0

    def foreign_bytes(self) -> int:
        """What processes outside gpuscribe hold on the device, from the latest fresh reading.
        Where the device does not say which memory is the workers', gpuscribe's share is taken
        to be what its ledger admitted: counting it as foreign would charge it twice."""
        used = self.reading.memory_used_bytes
        ours = self.reading.used_by(self.worker.pids())
        if ours == 0:
            ours = min(used, self.ledger.admitted_bytes)
        return max(0, used - ours)


def select_devices(readings: Sequence[DeviceReading], wanted: str) -> list[DeviceReading]:
    """The devices named by the `devices` setting: all when empty (or "cpu", which detection
    already honoured), else those whose index or UUID is listed."""
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    if not names or names == ["cpu"]:
        return list(readings)
    if all(r.kind is DeviceKind.CPU for r in readings):
        raise ConfigError(
            f"invalid setting devices={wanted!r}: it names GPUs but this machine has none that "
            "NVML can see (no NVIDIA driver?): set devices=cpu to run on the CPU, or leave it "
            "empty",
            "devices",
        )
    chosen = [r for r in readings if str(r.index) in names or r.uuid in names]
    found = {str(r.index) for r in chosen} | {r.uuid for r in chosen}
    missing = [n for n in names if n not in found]
    if missing:
        known = ", ".join(f"{r.index} ({r.uuid})" for r in readings)
        raise ConfigError(
            f"invalid setting devices={wanted!r}: no device {missing}; known: {known}"
        )
    return chosen


def build_slot(
    reading: DeviceReading, settings: Settings, worker_for: Callable[[DeviceRef], WorkerHandle]
) -> DeviceSlot:
    """A device's slot: its ledger under the settings' cap and task limit (the CPU's task
    limit is its cores', `cpu_max_tasks`), and the worker that `worker_for` makes for it."""
    device = DeviceRef(reading.kind, reading.uuid, reading.index, reading.name)
    max_tasks = settings.max_tasks_per_gpu
    if reading.kind is DeviceKind.CPU:
        max_tasks = min(max_tasks, settings.cpu_max_tasks)
    ledger = DeviceLedger(
        reading.uuid, reading.index, reading.memory_total_bytes,
        cap_fraction=settings.max_memory_utilization,
        reserve_bytes=settings.system_reserve_bytes,
        max_tasks=max_tasks,
    )  # fmt: skip
    return DeviceSlot(device, ledger, worker_for(device), reading)
