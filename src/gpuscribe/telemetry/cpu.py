"""The CPU as the one device of a machine without GPUs.

Figures come from /proc (Linux). Where /proc is missing, memory falls back to `os.sysconf` and
utilisation and per-process memory read as unknown; nothing here needs psutil.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gpuscribe.telemetry.base import DeviceKind, DeviceReading, ProcessMemory

log = logging.getLogger(__name__)

CPU_UUID = "cpu"
KIB = 1024


class CpuTelemetry:
    """`GpuTelemetry` for the CPU. `pids` names the worker processes whose memory to report."""

    def __init__(
        self, pids: Callable[[], set[int]] | None = None, proc_root: str | Path = "/proc"
    ) -> None:
        self._pids = pids
        self._proc = Path(proc_root)
        self._lock = threading.Lock()
        self._last_times: tuple[int, int] | None = None  # (busy, total) jiffies at the last read
        self._utilization: float | None = None
        self._name = f"CPU ({self._model_name()})"

    def discover(self) -> list[DeviceReading]:
        return [self.read(CPU_UUID)]

    def read(self, uuid: str) -> DeviceReading:
        if uuid != CPU_UUID:
            raise KeyError(f"no device {uuid!r} on the CPU telemetry (only {CPU_UUID!r})")
        total, used = self._memory()
        return DeviceReading(
            index=0,
            uuid=CPU_UUID,
            name=self._name,
            kind=DeviceKind.CPU,
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=max(0, total - used),
            read_at=time.time(),
            utilization_percent=self._cpu_utilization(),
            processes=self._processes(),
        )

    def close(self) -> None:
        """Nothing to release."""

    # Sources ----------------------------------------------------------------------------------

    def _model_name(self) -> str:
        text = _read(self._proc / "cpuinfo")
        for line in (text or "").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
                return value.strip()
        return platform.processor() or platform.machine() or "unknown"

    def _memory(self) -> tuple[int, int]:
        """(total, used) bytes; used = MemTotal - MemAvailable."""
        fields = _meminfo(_read(self._proc / "meminfo"))
        if "MemTotal" in fields and "MemAvailable" in fields:
            return fields["MemTotal"], fields["MemTotal"] - fields["MemAvailable"]
        return _sysconf_memory()

    def _cpu_utilization(self) -> float | None:
        """Busy share of all CPUs since the previous read; None on the first read."""
        times = _cpu_times(_read(self._proc / "stat"))
        if times is None:
            return None
        with self._lock:
            previous, self._last_times = self._last_times, times
            if previous is not None:
                busy, total = times[0] - previous[0], times[1] - previous[1]
                if total > 0:
                    self._utilization = min(100.0, max(0.0, 100.0 * busy / total))
            return self._utilization

    def _processes(self) -> tuple[ProcessMemory, ...]:
        if self._pids is None:
            return ()
        found = []
        for pid in sorted(self._pids()):
            rss = _meminfo(_read(self._proc / str(pid) / "status")).get("VmRSS")
            if rss is not None:
                found.append(ProcessMemory(pid=pid, used_bytes=rss))
        return tuple(found)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _meminfo(text: str | None) -> dict[str, int]:
    """`Key:   123 kB` lines (/proc/meminfo, /proc/<pid>/status) as bytes."""
    fields: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[key.strip()] = int(parts[0]) * KIB
    return fields


def _cpu_times(text: str | None) -> tuple[int, int] | None:
    """(busy, total) jiffies from the aggregate `cpu` line of /proc/stat. Guest time is already
    inside user time, so only the first eight columns count; idle and iowait are not busy."""
    for line in (text or "").splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1:9]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return sum(values) - idle, sum(values)
    return None


def _sysconf_memory() -> tuple[int, int]:
    """Total and used memory without /proc; used is 0 where the system cannot tell."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        log.warning("cannot read the machine's memory: neither /proc/meminfo nor sysconf")
        return 0, 0
    try:
        available = page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return total, 0
    return total, max(0, total - available)
