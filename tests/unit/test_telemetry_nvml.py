"""NvmlTelemetry against a fake of the NVML C library.

The fake is a module built from the real `pynvml` binding's own error classes, constants and
ctypes structures, so NvmlTelemetry sees exactly the types, attribute names and exceptions the
real binding gives; only the C calls behind them are replaced (no GPU on this machine).
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from gpuscribe.memory.types import GIB
from gpuscribe.telemetry.base import DeviceKind, GpuTelemetry
from gpuscribe.telemetry.nvml import NvmlTelemetry


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    total: int = 80 * GIB
    used: int = 2 * GIB
    reserved: int = GIB // 2
    gpu_util: int = 40
    mem_util: int = 20
    temperature: int = 55
    power_mw: int = 123_456
    capability: tuple[int, int] = (9, 0)
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    memory_v2: bool = True
    unsupported: set[str] = field(default_factory=set)  # function names answering NotSupported
    lost: bool = False
    lost_on: set[str] = field(default_factory=set)  # function names answering GpuIsLost


class FakeNvml:
    """State behind the fake module: the devices and the calls made."""

    def __init__(self, gpus: list[FakeGpu], driver: str = "570.86.15") -> None:
        self.gpus = gpus
        self.driver = driver
        self.initialised = False
        self.shutdown_calls = 0
        self.init_error: int | None = None
        self.count_error: int | None = None

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("fake_pynvml")
        for name in dir(pynvml):
            if (
                name.startswith(("NVMLError", "NVML_", "nvmlMemory_v"))
                or name == "NVMLLibraryMismatchError"
            ):
                setattr(mod, name, getattr(pynvml, name))
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(mod, name, getattr(self, name))
        return mod

    # Library -----------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self.initialised = False

    def _check(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        if self.count_error is not None:
            raise pynvml.NVMLError(self.count_error)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check()
        if index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._alive(self.gpus[index])

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self._check()
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return self._alive(gpu)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def _alive(self, gpu: FakeGpu) -> FakeGpu:
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _query(self, gpu: FakeGpu, function: str) -> None:
        self._check()
        self._alive(gpu)
        if function in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if function in gpu.lost_on:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    # Device ------------------------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, gpu: FakeGpu) -> int:
        self._query(gpu, "nvmlDeviceGetIndex")
        return self.gpus.index(gpu)

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        self._query(gpu, "nvmlDeviceGetUUID")
        return gpu.uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        self._query(gpu, "nvmlDeviceGetName")
        return gpu.name

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu, version: int | None = None) -> Any:
        self._query(gpu, "nvmlDeviceGetMemoryInfo")
        if version:
            if not gpu.memory_v2:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            info = pynvml.c_nvmlMemory_v2_t()
            info.version = version
            info.reserved = gpu.reserved
            info.used = gpu.used
        else:
            info = pynvml.c_nvmlMemory_t()
            info.used = gpu.used + gpu.reserved  # v1 counts the driver's reserve as used
        info.total = gpu.total
        info.free = gpu.total - info.used - (gpu.reserved if version else 0)
        return info

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> Any:
        self._query(gpu, "nvmlDeviceGetUtilizationRates")
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu = gpu.gpu_util
        rates.memory = gpu.mem_util
        return rates

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        self._query(gpu, "nvmlDeviceGetTemperature")
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        self._query(gpu, "nvmlDeviceGetPowerUsage")
        return gpu.power_mw

    def nvmlDeviceGetCudaComputeCapability(self, gpu: FakeGpu) -> tuple[int, int]:
        self._query(gpu, "nvmlDeviceGetCudaComputeCapability")
        return gpu.capability

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[Any]:
        self._query(gpu, "nvmlDeviceGetComputeRunningProcesses")
        procs = []
        for pid, used in gpu.processes:
            obj = pynvml.nvmlFriendlyObject(
                {"pid": pid, "usedGpuMemory": used, "gpuInstanceId": 0, "computeInstanceId": 0}
            )
            procs.append(obj)
        return procs


def make(*gpus: FakeGpu) -> tuple[FakeNvml, NvmlTelemetry]:
    fake = FakeNvml(list(gpus))
    return fake, NvmlTelemetry(fake.module())


def test_discover_reads_every_figure() -> None:
    _fake, telemetry = make(FakeGpu("GPU-a", processes=[(101, GIB), (102, None)]), FakeGpu("GPU-b"))
    readings = telemetry.discover()
    assert [r.uuid for r in readings] == ["GPU-a", "GPU-b"]
    first = readings[0]
    assert first.index == 0 and readings[1].index == 1
    assert first.kind is DeviceKind.CUDA and first.healthy and first.error is None
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.memory_total_bytes == 80 * GIB
    assert first.memory_used_bytes == 2 * GIB
    assert first.memory_driver_reserved_bytes == GIB // 2
    assert first.memory_free_bytes == 80 * GIB - 2 * GIB - GIB // 2
    assert first.utilization_percent == 40.0 and first.memory_utilization_percent == 20.0
    assert first.temperature_c == 55.0
    assert first.power_watts == pytest.approx(123.456)
    assert first.compute_capability == (9, 0)
    assert first.driver_version == "570.86.15"
    assert first.used_by({101, 102}) == GIB  # None (unattributable) counts as 0
    assert [p.pid for p in first.processes] == [101, 102]


def test_satisfies_the_protocol_and_init_shutdown() -> None:
    fake, telemetry = make(FakeGpu("GPU-a"))
    protocol: GpuTelemetry = telemetry
    assert fake.initialised
    protocol.close()
    protocol.close()
    assert fake.shutdown_calls == 1


def test_read_is_fresh_by_uuid() -> None:
    fake, telemetry = make(FakeGpu("GPU-a"), FakeGpu("GPU-b"))
    fake.gpus[1].used = 10 * GIB
    reading = telemetry.read("GPU-b")
    assert reading.index == 1  # from nvmlDeviceGetIndex, before any discover
    assert reading.memory_used_bytes == 10 * GIB
    fake.gpus[1].used = 11 * GIB
    assert telemetry.read("GPU-b").memory_used_bytes == 11 * GIB


def test_unsupported_readings_become_none(caplog: pytest.LogCaptureFixture) -> None:
    unsupported = {
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetCudaComputeCapability",
        "nvmlDeviceGetComputeRunningProcesses",
    }
    _fake, telemetry = make(FakeGpu("GPU-a", unsupported=unsupported))
    with caplog.at_level(logging.INFO, logger="gpuscribe.telemetry.nvml"):
        for _ in range(3):
            reading = telemetry.read("GPU-a")
    assert reading.healthy
    assert reading.utilization_percent is None and reading.memory_utilization_percent is None
    assert reading.temperature_c is None and reading.power_watts is None
    assert reading.compute_capability is None and reading.processes == ()
    assert reading.memory_total_bytes == 80 * GIB
    # Logged once per device and error kind, not on every read.
    assert len([r for r in caplog.records if "NotSupported" in r.getMessage()]) == len(unsupported)


def test_memory_falls_back_to_v1_where_v2_is_missing() -> None:
    _fake, telemetry = make(FakeGpu("GPU-a", memory_v2=False))
    reading = telemetry.read("GPU-a")
    assert reading.healthy
    assert reading.memory_driver_reserved_bytes is None
    assert reading.memory_used_bytes == 2 * GIB + GIB // 2
    assert reading.memory_free_bytes == 80 * GIB - reading.memory_used_bytes


def test_lost_gpu_is_drained_not_crashed() -> None:
    fake, telemetry = make(FakeGpu("GPU-a"), FakeGpu("GPU-b"))
    telemetry.discover()
    fake.gpus[0].lost = True
    lost = telemetry.read("GPU-a")
    assert not lost.healthy and lost.error is not None and "lost" in lost.error.lower()
    assert lost.memory_total_bytes == 80 * GIB  # last good figures kept
    assert lost.index == 0
    readings = {r.uuid: r for r in telemetry.discover()}
    assert not readings["GPU-a"].healthy and readings["GPU-b"].healthy
    fake.gpus[0].lost = False
    assert telemetry.read("GPU-a").healthy


def test_gpu_lost_during_an_optional_query_is_unhealthy() -> None:
    fake, telemetry = make(FakeGpu("GPU-a"))
    telemetry.discover()
    fake.gpus[0].lost_on.add("nvmlDeviceGetPowerUsage")
    reading = telemetry.read("GPU-a")
    assert not reading.healthy and reading.error == "GPU is lost"
    assert reading.memory_total_bytes == 80 * GIB


def test_unknown_device_reads_unhealthy_with_zeros() -> None:
    _fake, telemetry = make(FakeGpu("GPU-a"))
    reading = telemetry.read("GPU-missing")
    assert not reading.healthy
    assert reading.memory_total_bytes == 0 and reading.index == -1
    assert reading.error is not None and "Not Found" in reading.error


def test_device_that_falls_off_the_bus_stays_listed_unhealthy() -> None:
    fake, telemetry = make(FakeGpu("GPU-a"), FakeGpu("GPU-b"))
    telemetry.discover()
    del fake.gpus[1]
    readings = telemetry.discover()
    assert [(r.uuid, r.healthy) for r in readings] == [("GPU-a", True), ("GPU-b", False)]


def test_memory_unreadable_in_both_versions_is_unhealthy() -> None:
    _fake, telemetry = make(FakeGpu("GPU-a", unsupported={"nvmlDeviceGetMemoryInfo"}))
    reading = telemetry.read("GPU-a")
    assert not reading.healthy
    assert reading.error is not None and "memory" in reading.error


def test_init_failure_raises_nvml_error() -> None:
    fake = FakeNvml([])
    fake.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        NvmlTelemetry(fake.module())


def test_count_failure_reports_known_devices_unhealthy() -> None:
    fake, telemetry = make(FakeGpu("GPU-a"))
    telemetry.discover()
    fake.count_error = pynvml.NVML_ERROR_UNKNOWN
    readings = telemetry.discover()
    assert [(r.uuid, r.healthy) for r in readings] == [("GPU-a", False)]
