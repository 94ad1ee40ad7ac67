"""Choose the telemetry for this node: simulated GPUs if asked, else NVML, else the CPU.

Detection goes through NVML only. It never imports torch nor creates a CUDA context: a context in
the scheduler process would take GPU memory no worker can use, and NVML and CUDA would then
have to agree on device order outside `CUDA_VISIBLE_DEVICES=<uuid>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from gpuscribe.config import Settings
from gpuscribe.telemetry.base import GpuTelemetry
from gpuscribe.telemetry.cpu import CpuTelemetry
from gpuscribe.telemetry.nvml import NvmlTelemetry
from gpuscribe.telemetry.simulated import FOREIGN_FILE_NAME, SimulatedGpus

log = logging.getLogger(__name__)


def open_telemetry(
    settings: Settings,
    *,
    nvml: ModuleType | None = None,
    cpu_pids: Callable[[], set[int]] | None = None,
) -> GpuTelemetry:
    """The node's telemetry. `nvml` replaces the `pynvml` binding (tests); `cpu_pids` names the
    worker processes whose memory the CPU telemetry reports."""
    if settings.simulate_gpus.strip():
        foreign_file = Path(settings.data_dir) / FOREIGN_FILE_NAME
        gpus = SimulatedGpus(settings.simulate_gpus, foreign_file=foreign_file)
        log.info(
            "telemetry: %d simulated GPU(s) from --simulate-gpus %r",
            len(gpus.discover()),
            settings.simulate_gpus,
        )
        return gpus
    telemetry = None if settings.devices.strip().lower() == "cpu" else _try_nvml(nvml)
    if telemetry is not None:
        return telemetry
    cpu = CpuTelemetry(pids=cpu_pids)
    log.info("telemetry: %s", cpu.discover()[0].name)
    return cpu


def _try_nvml(nvml: ModuleType | None) -> NvmlTelemetry | None:
    """NVML telemetry if the library initialises and sees at least one device, else None."""
    try:
        telemetry = NvmlTelemetry(nvml)
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.info("telemetry: NVML not used (%s: %s); using the CPU", type(exc).__name__, exc)
        return None
    try:
        devices = telemetry.discover()
    except Exception as exc:
        log.warning("telemetry: NVML failed to list devices (%s); using the CPU", exc)
        telemetry.close()
        return None
    if not devices:
        log.info("telemetry: NVML initialised but sees no GPU; using the CPU")
        telemetry.close()
        return None
    names = ", ".join(f"{d.index}: {d.name} ({d.uuid})" for d in devices)
    log.info("telemetry: NVML, %d GPU(s): %s", len(devices), names)
    return telemetry
