"""A short cache of readings for displays (`/v1/gpus`, metrics, the CLI).

Admission must never decide on a stale snapshot (the design's sketch cached 30 s, which let
another process's memory go unseen: docs/DESIGN.md, What we changed and why): it calls `fresh()`
and reads the inner telemetry directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gpuscribe.telemetry.base import DeviceReading, GpuTelemetry


class CachedTelemetry:
    """`GpuTelemetry` serving readings up to `ttl_seconds` old. A discover refreshes every
    device's entry, so a read right after it is served from the same snapshot."""

    def __init__(
        self,
        inner: GpuTelemetry,
        ttl_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds < 0:
            raise ValueError(f"ttl_seconds must be zero or more, got {ttl_seconds}")
        self._inner = inner
        self._ttl = ttl_seconds
        self._clock = clock
        # The lock is held across inner reads so that concurrent displays share one read.
        self._lock = threading.Lock()
        self._devices: tuple[float, list[DeviceReading]] | None = None
        self._readings: dict[str, tuple[float, DeviceReading]] = {}

    def fresh(self) -> GpuTelemetry:
        """The uncached telemetry, for admission decisions."""
        return self._inner

    def discover(self) -> list[DeviceReading]:
        with self._lock:
            now = self._clock()
            if self._devices is not None and now - self._devices[0] <= self._ttl:
                return list(self._devices[1])
            readings = self._inner.discover()
            self._devices = (now, readings)
            self._readings = {r.uuid: (now, r) for r in readings}
            return list(readings)

    def read(self, uuid: str) -> DeviceReading:
        with self._lock:
            now = self._clock()
            cached = self._readings.get(uuid)
            if cached is not None and now - cached[0] <= self._ttl:
                return cached[1]
            reading = self._inner.read(uuid)
            self._readings[uuid] = (now, reading)
            return reading

    def invalidate(self) -> None:
        """Forget every cached reading (devices changed, or a display wants fresh figures)."""
        with self._lock:
            self._devices = None
            self._readings.clear()

    def close(self) -> None:
        self.invalidate()
        self._inner.close()
