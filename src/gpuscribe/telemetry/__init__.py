"""GPU telemetry: what each device really holds, read from NVML, a simulation, or the CPU."""

from gpuscribe.telemetry.base import DeviceKind, DeviceReading, GpuTelemetry, ProcessMemory

__all__ = ["DeviceKind", "DeviceReading", "GpuTelemetry", "ProcessMemory"]
