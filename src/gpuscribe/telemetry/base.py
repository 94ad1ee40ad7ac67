"""The telemetry interface. Admission reads fresh figures through it; displays may use a cache."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class DeviceKind(enum.StrEnum):
    CUDA = "cuda"
    SIMULATED = "simulated"
    CPU = "cpu"


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    pid: int
    used_bytes: int


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """One device at one moment. `None` means the device does not report that figure.

    `memory_used_bytes` is what the device reports in use, other processes and CUDA contexts
    included. `memory_driver_reserved_bytes` is NVML v2's `reserved` (driver/firmware), which
    is neither used nor free.
    """

    index: int
    uuid: str
    name: str
    kind: DeviceKind
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    read_at: float
    memory_driver_reserved_bytes: int | None = None
    utilization_percent: float | None = None
    memory_utilization_percent: float | None = None
    temperature_c: float | None = None
    power_watts: float | None = None
    compute_capability: tuple[int, int] | None = None
    driver_version: str | None = None
    processes: tuple[ProcessMemory, ...] = ()
    healthy: bool = True
    error: str | None = None

    def used_by(self, pids: set[int]) -> int:
        """Bytes the given processes hold on this device, as the device reports them."""
        return sum(p.used_bytes for p in self.processes if p.pid in pids)


class GpuTelemetry(Protocol):
    """Reads devices. Implementations: NVML (real GPUs), simulated GPUs, the CPU."""

    def discover(self) -> list[DeviceReading]:
        """Every device, fresh. Called at start and when devices may have changed."""
        ...

    def read(self, uuid: str) -> DeviceReading:
        """One device, fresh (no cache). A lost device returns a reading with healthy=False."""
        ...

    def close(self) -> None: ...
