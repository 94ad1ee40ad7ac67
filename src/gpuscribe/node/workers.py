"""Which worker drives a device: a real process for GPUs and the CPU, in-process for
simulated GPUs."""

from __future__ import annotations

from gpuscribe.config import Settings
from gpuscribe.telemetry.base import DeviceKind, GpuTelemetry
from gpuscribe.telemetry.simulated import SimulatedGpus
from gpuscribe.workers.base import EventSink, WorkerHandle
from gpuscribe.workers.messages import DeviceRef

SIMULATED_PID_BASE = 900_000


def make_worker(
    device: DeviceRef, settings: Settings, telemetry: GpuTelemetry, sink: EventSink
) -> WorkerHandle:
    if device.kind is DeviceKind.SIMULATED:
        from gpuscribe.workers.simulated import SimulatedWorker

        if not isinstance(telemetry, SimulatedGpus):
            raise TypeError("simulated devices need the SimulatedGpus telemetry")
        return SimulatedWorker(
            device, telemetry, settings, sink, pid=SIMULATED_PID_BASE + device.index
        )
    from gpuscribe.workers.handle import ProcessWorker

    return ProcessWorker(device, settings, sink)
