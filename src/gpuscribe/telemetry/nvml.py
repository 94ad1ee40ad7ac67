"""Real GPUs read through NVML (`nvidia-ml-py`, whose module is named `pynvml`).

NVML reads devices without creating a CUDA context, so the scheduler process can watch every GPU
while only worker processes hold contexts. Figures a device does not report (NVMLError on an
optional query) become `None`; a device that is lost, or whose handle can no longer be obtained,
is returned with `healthy=False` so the node can drain it instead of crashing.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType
from typing import Any, TypeVar

from gpuscribe.telemetry.base import DeviceKind, DeviceReading, ProcessMemory

log = logging.getLogger(__name__)

T = TypeVar("T")

# Error classes that mean the device itself is gone, not that one figure is unsupported.
_LOST_ERRORS = ("NVMLError_GpuIsLost", "NVMLError_ResetRequired")


class _DeviceLost(Exception):
    """Internal: a query found the device lost; carries the NVML error text."""


class NvmlTelemetry:
    """`GpuTelemetry` over NVML. The binding module is injectable so tests can pass a fake."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml if nvml is not None else importlib.import_module("pynvml")
        self._errors = self._error_classes()
        self._lost_errors = tuple(
            cls for name in _LOST_ERRORS if (cls := getattr(self._nvml, name, None)) is not None
        )
        self._nvml.nvmlInit()
        self._lock = threading.Lock()
        self._last_good: dict[str, DeviceReading] = {}
        self._index_of: dict[str, int] = {}
        self._logged: set[tuple[str, str, str]] = set()
        self._lost: set[str] = set()
        self._driver_version: str | None = None
        self._closed = False

    def _error_classes(self) -> tuple[type[BaseException], ...]:
        classes: list[type[BaseException]] = [self._nvml.NVMLError]
        mismatch = getattr(self._nvml, "NVMLLibraryMismatchError", None)
        if isinstance(mismatch, type) and issubclass(mismatch, BaseException):
            classes.append(mismatch)
        return tuple(classes)

    # GpuTelemetry -----------------------------------------------------------------------------

    def discover(self) -> list[DeviceReading]:
        """Every device NVML enumerates; devices seen before but now missing come back unhealthy."""
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._errors as exc:
            self._log_once("all devices", "count", exc)
            count = 0
        readings: list[DeviceReading] = []
        for index in range(count):
            reading = self._discover_one(index)
            if reading is not None:
                readings.append(reading)
        seen = {r.uuid for r in readings}
        with self._lock:
            missing = [uuid for uuid in self._index_of if uuid not in seen]
        readings.extend(self._lost_reading(uuid, "device no longer enumerated") for uuid in missing)
        return sorted(readings, key=lambda r: r.index)

    def read(self, uuid: str) -> DeviceReading:
        """One device, fresh, by UUID."""
        try:
            handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
        except self._errors as exc:
            return self._lost_reading(uuid, f"cannot get handle: {exc}", exc)
        with self._lock:
            index = self._index_of.get(uuid)
        if index is None:
            index = self._index(handle, uuid)
        return self._read_handle(handle, uuid, index)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except self._errors as exc:
            log.warning("nvmlShutdown failed: %s", exc)

    # Reading ----------------------------------------------------------------------------------

    def _discover_one(self, index: int) -> DeviceReading | None:
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(self._nvml.nvmlDeviceGetUUID(handle))
        except self._errors as exc:
            known = self._uuid_at(index)
            if known is None:
                self._log_once(f"index {index}", "handle", exc)
                return None
            return self._lost_reading(known, f"cannot get handle: {exc}", exc)
        with self._lock:
            self._index_of[uuid] = index
        return self._read_handle(handle, uuid, index)

    def _index(self, handle: Any, uuid: str) -> int:
        """NVML index of a device not yet discovered (-1 where NVML cannot tell)."""
        try:
            index = self._optional(
                uuid, "index", lambda: int(self._nvml.nvmlDeviceGetIndex(handle))
            )
        except _DeviceLost:
            return -1
        if index is None:
            return -1
        with self._lock:
            self._index_of[uuid] = index
        return index

    def _uuid_at(self, index: int) -> str | None:
        with self._lock:
            return next((u for u, i in self._index_of.items() if i == index), None)

    def _read_handle(self, handle: Any, uuid: str, index: int) -> DeviceReading:
        try:
            reading = self._build_reading(handle, uuid, index)
        except _DeviceLost as exc:
            return self._lost_reading(uuid, str(exc))
        with self._lock:
            self._last_good[uuid] = reading
            recovered = uuid in self._lost
            self._lost.discard(uuid)
            if recovered:
                self._logged = {key for key in self._logged if key[0] != uuid}
        if recovered:
            log.warning("NVML device %s answers again", uuid)
        return reading

    def _build_reading(self, handle: Any, uuid: str, index: int) -> DeviceReading:
        total, used, free, reserved = self._memory(handle, uuid)
        utilization = self._optional(uuid, "utilization", self._getter("UtilizationRates", handle))
        return DeviceReading(
            index=index,
            uuid=uuid,
            name=self._name(handle, uuid),
            kind=DeviceKind.CUDA,
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=free,
            read_at=time.time(),
            memory_driver_reserved_bytes=reserved,
            utilization_percent=_percent(utilization, "gpu"),
            memory_utilization_percent=_percent(utilization, "memory"),
            temperature_c=self._temperature(handle, uuid),
            power_watts=self._power(handle, uuid),
            compute_capability=self._compute_capability(handle, uuid),
            driver_version=self._driver(uuid),
            processes=self._processes(handle, uuid),
        )

    def _memory(self, handle: Any, uuid: str) -> tuple[int, int, int, int | None]:
        """Total/used/free (and reserved where v2 is supported). Memory is not optional: if
        neither version answers, the device cannot be admitted to, so it reads as lost."""
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if version is not None:
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
                return int(info.total), int(info.used), int(info.free), int(info.reserved)
            except self._lost_errors as exc:
                raise _DeviceLost(str(exc)) from exc
            except self._errors as exc:
                self._log_once(uuid, "memory_v2", exc, level=logging.INFO)
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        except self._errors as exc:
            raise _DeviceLost(f"cannot read memory: {exc}") from exc
        return int(info.total), int(info.used), int(info.free), None

    def _name(self, handle: Any, uuid: str) -> str:
        name = self._optional(uuid, "name", self._getter("Name", handle))
        return _text(name) if name is not None else "unknown NVIDIA GPU"

    def _temperature(self, handle: Any, uuid: str) -> float | None:
        sensor = self._nvml.NVML_TEMPERATURE_GPU
        value = self._optional(uuid, "temperature", self._getter("Temperature", handle, sensor))
        return float(value) if value is not None else None

    def _power(self, handle: Any, uuid: str) -> float | None:
        milliwatts = self._optional(uuid, "power", self._getter("PowerUsage", handle))
        return float(milliwatts) / 1000.0 if milliwatts is not None else None

    def _compute_capability(self, handle: Any, uuid: str) -> tuple[int, int] | None:
        value = self._optional(
            uuid, "compute_capability", self._getter("CudaComputeCapability", handle)
        )
        return (int(value[0]), int(value[1])) if value is not None else None

    def _driver(self, uuid: str) -> str | None:
        if self._driver_version is None:
            version = self._optional(uuid, "driver_version", self._nvml.nvmlSystemGetDriverVersion)
            self._driver_version = _text(version) if version is not None else None
        return self._driver_version

    def _processes(self, handle: Any, uuid: str) -> tuple[ProcessMemory, ...]:
        procs = self._optional(uuid, "processes", self._getter("ComputeRunningProcesses", handle))
        if procs is None:
            return ()
        # usedGpuMemory is None where the driver cannot attribute memory (e.g. WDDM).
        return tuple(
            ProcessMemory(pid=int(p.pid), used_bytes=int(p.usedGpuMemory or 0)) for p in procs
        )

    def _getter(self, what: str, handle: Any, *args: Any) -> Callable[[], Any]:
        function = getattr(self._nvml, f"nvmlDeviceGet{what}")
        return lambda: function(handle, *args)

    def _optional(self, uuid: str, field: str, query: Callable[[], T]) -> T | None:
        """Run one optional query: unsupported figures become None, a lost device raises."""
        try:
            return query()
        except self._lost_errors as exc:
            raise _DeviceLost(str(exc)) from exc
        except self._errors as exc:
            self._log_once(uuid, field, exc, level=logging.INFO)
            return None

    # Failures ---------------------------------------------------------------------------------

    def _lost_reading(
        self, uuid: str, error: str, exc: BaseException | None = None
    ) -> DeviceReading:
        """An unhealthy reading, with the memory figures of the last good one (or zeros)."""
        self._log_once(uuid, "lost", exc if exc is not None else RuntimeError(error))
        with self._lock:
            self._lost.add(uuid)
            last = self._last_good.get(uuid)
            index = self._index_of.get(uuid, -1)
        now = time.time()
        if last is not None:
            return replace(last, healthy=False, error=error, read_at=now, processes=())
        return DeviceReading(
            index=index,
            uuid=uuid,
            name="unknown NVIDIA GPU",
            kind=DeviceKind.CUDA,
            memory_total_bytes=0,
            memory_used_bytes=0,
            memory_free_bytes=0,
            read_at=now,
            healthy=False,
            error=error,
        )

    def _log_once(
        self, device: str, field: str, exc: BaseException, *, level: int = logging.WARNING
    ) -> None:
        key = (device, field, type(exc).__name__)
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.log(level, "NVML %s on device %s: %s (%s)", field, device, exc, type(exc).__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _percent(utilization: Any, attribute: str) -> float | None:
    return float(getattr(utilization, attribute)) if utilization is not None else None
