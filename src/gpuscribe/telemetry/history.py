"""The last minutes of each device, in memory: what the dashboard plots the moment it opens.

The node's device watch records one `DeviceSample` per device each time it reads the devices
(every second); `DeviceHistory` keeps the newest `max_samples` of each, oldest first. Nothing is
stored on disk: a restarted node starts a fresh history.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from gpuscribe.telemetry.base import DeviceReading

DEFAULT_MAX_SAMPLES = 600  # ten minutes at the device watch's one reading a second


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One device at one moment: its memory split by owner, the ledger, and its sensors."""

    at: float  # seconds since the epoch
    memory_used_bytes: int  # every process on the device
    memory_foreign_bytes: int  # processes outside gpuscribe
    memory_reserved_bytes: int  # what gpuscribe's ledger has admitted
    memory_cap_bytes: int
    utilization_percent: float | None
    temperature_c: float | None
    power_watts: float | None

    @classmethod
    def of(
        cls, reading: DeviceReading, *, foreign_bytes: int, reserved_bytes: int, cap_bytes: int
    ) -> DeviceSample:
        return cls(
            at=reading.read_at,
            memory_used_bytes=reading.memory_used_bytes,
            memory_foreign_bytes=foreign_bytes,
            memory_reserved_bytes=reserved_bytes,
            memory_cap_bytes=cap_bytes,
            utilization_percent=reading.utilization_percent,
            temperature_c=reading.temperature_c,
            power_watts=reading.power_watts,
        )


class DeviceHistory:
    """A ring buffer of samples per device UUID. Thread-safe: the device watch writes while
    HTTP requests read."""

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        self.max_samples = max_samples
        self._samples: dict[str, deque[DeviceSample]] = {}
        self._lock = threading.Lock()

    def record(self, uuid: str, sample: DeviceSample) -> None:
        with self._lock:
            ring = self._samples.setdefault(uuid, deque(maxlen=self.max_samples))
            ring.append(sample)

    def since(self, uuid: str, start: float) -> list[DeviceSample]:
        """The device's samples taken at `start` or later, oldest first (none for an unknown
        device)."""
        with self._lock:
            ring = self._samples.get(uuid, ())
            return [sample for sample in ring if sample.at >= start]
