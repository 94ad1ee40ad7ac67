"""Memory measurement inside a worker: what the process holds on its device, sampled while tasks
run, and each task's peak above what the process held when it began.

`PeakSampler` reads a `DeviceMemory` every ~20 ms in a background thread while any task runs.
`OverlapTracker` and `TaskWindow` are the pure parts (which tasks overlapped, peak arithmetic);
`ProgressThrottle` keeps progress reports to a few a second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_SECONDS = 0.02
PROGRESS_INTERVAL_SECONDS = 0.25


class DeviceMemory(Protocol):
    """What this process holds on its device, read now."""

    context_bytes: int

    def held_bytes(self) -> int:
        """What the process holds now."""
        ...

    def peak_bytes(self) -> int:
        """The most the process held since the last `release_cached` (its high-water mark)."""
        ...

    def release_cached(self) -> None:
        """Give cached but unused memory back (CUDA: empty the allocator's cache) and restart
        the high-water mark from what is held now."""
        ...

    def limit(self, admitted_bytes: int) -> None:
        """Cap what this process may allocate at what the ledger admitted (a hard backstop)."""
        ...


@dataclass(frozen=True, slots=True)
class TaskPeak:
    peak_bytes: int
    baseline_bytes: int
    ran_alone: bool

    @property
    def working_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)


class OverlapTracker:
    """Which tasks ran alone: a task overlapped when another was active at any moment of its run."""

    def __init__(self) -> None:
        self._active: set[str] = set()
        self._overlapped: set[str] = set()
        self._lock = threading.Lock()

    def begin(self, task_id: str) -> bool:
        """Register a task; True when no other task is active now."""
        with self._lock:
            if self._active:
                self._overlapped.update(self._active)
                self._overlapped.add(task_id)
            self._active.add(task_id)
            return len(self._active) == 1

    def end(self, task_id: str) -> bool:
        """Unregister a task; True when it ran alone from begin to end."""
        with self._lock:
            self._active.discard(task_id)
            overlapped = task_id in self._overlapped
            self._overlapped.discard(task_id)
            return not overlapped

    def active_count(self) -> int:
        with self._lock:
            return len(self._active)


@dataclass(slots=True)
class TaskWindow:
    """One task's running peak, from its baseline on."""

    baseline_bytes: int
    peak_bytes: int

    def observe(self, held_bytes: int) -> None:
        self.peak_bytes = max(self.peak_bytes, held_bytes)


class PeakSampler:
    """Samples the process's device memory while tasks run and reports each task's peak."""

    def __init__(
        self,
        memory: DeviceMemory,
        *,
        interval_seconds: float = SAMPLE_INTERVAL_SECONDS,
    ) -> None:
        self._memory = memory
        self._interval = interval_seconds
        self._overlap = OverlapTracker()
        self._windows: dict[str, TaskWindow] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def begin(self, task_id: str) -> None:
        """A task started: from now on it counts in every other task's overlap."""
        self._overlap.begin(task_id)
        self._wake.set()

    def mark_baseline(self, task_id: str) -> None:
        """The task's model is loaded: what the process holds now is its baseline (context and
        weights). Alone, the allocator's cache is emptied first, so the baseline is what the
        process really needs and the high-water mark starts from it."""
        if self._overlap.active_count() == 1:
            self._memory.release_cached()
        held = self._read()
        with self._lock:
            self._windows[task_id] = TaskWindow(baseline_bytes=held, peak_bytes=held)

    def end(self, task_id: str) -> TaskPeak | None:
        """The task's peak from its baseline on; None when it never reached its baseline."""
        self._observe(self._read(peak=True))
        ran_alone = self._overlap.end(task_id)
        with self._lock:
            window = self._windows.pop(task_id, None)
        if window is None:
            return None
        return TaskPeak(window.peak_bytes, window.baseline_bytes, ran_alone)

    def _read(self, *, peak: bool = False) -> int:
        try:
            return self._memory.peak_bytes() if peak else self._memory.held_bytes()
        except Exception:
            log.exception("reading device memory failed")
            return 0

    def _observe(self, held_bytes: int) -> None:
        with self._lock:
            for window in self._windows.values():
                window.observe(held_bytes)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            if self._overlap.active_count() == 0:
                self._wake.wait()
                self._wake.clear()
                continue
            self._observe(self._read(peak=True))
            self._stopped.wait(self._interval)


class ProgressThrottle:
    """Lets a progress figure through at most once per interval, and only when it rose."""

    def __init__(
        self,
        interval_seconds: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._last_at: float | None = None
        self._last_value = 0.0

    def offer(self, progress: float) -> float | None:
        """The value to report now (clamped to [0, 1]), or None to stay quiet."""
        value = min(1.0, max(0.0, progress))
        now = self._clock()
        if value <= self._last_value:
            return None
        if self._last_at is not None and now - self._last_at < self._interval:
            return None
        self._last_at = now
        self._last_value = value
        return value

    def finish(self) -> float | None:
        """At completion: 1.0 unless it was already reported, so the last report is always 1."""
        if self._last_value >= 1.0:
            return None
        self._last_value = 1.0
        return 1.0


# --- device memory readers --------------------------------------------------------------------
def read_status_bytes(field: str, status_path: str = "/proc/self/status") -> int:
    """A memory line of this process's status (`VmRSS`, `VmHWM`), in bytes."""
    with open(status_path, encoding="ascii") as handle:
        return parse_status_bytes(handle.read(), field)


def parse_status_bytes(status_text: str, field: str) -> int:
    prefix = f"{field}:"
    for line in status_text.splitlines():
        if line.startswith(prefix):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no {field} line in process status")


class CpuMemory:
    """The CPU as a device: the process's resident memory (VmRSS; high-water VmHWM, reset
    through /proc/self/clear_refs where the kernel allows). No context, no cap."""

    context_bytes = 0

    def __init__(self) -> None:
        self._hwm_resettable = True

    def held_bytes(self) -> int:
        return read_status_bytes("VmRSS")

    def peak_bytes(self) -> int:
        if not self._hwm_resettable:
            return self.held_bytes()
        return max(read_status_bytes("VmHWM"), self.held_bytes())

    def release_cached(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
        except OSError:
            self._hwm_resettable = False

    def limit(self, admitted_bytes: int) -> None:
        return None


class NvmlProcessReader:
    """NVML's per-process figure for one pid on one GPU (by UUID). None where NVML cannot say
    (no NVML, or a pid namespace hides the process)."""

    def __init__(self, uuid: str, pid: int) -> None:
        self._pid = pid
        self._handle: object | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception as exc:
            log.warning("NVML unavailable in the worker (%s): using PyTorch's figures", exc)

    def process_bytes(self) -> int | None:
        if self._handle is None:
            return None
        try:
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:
            return None
        for proc in processes:
            if proc.pid == self._pid and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return None

    def device_used_bytes(self) -> int | None:
        if self._handle is None:
            return None
        try:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception:
            return None

    def device_total_bytes(self) -> int | None:
        if self._handle is None:
            return None
        try:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total)
        except Exception:
            return None


def context_from_readings(
    process_bytes: int | None,
    used_before: int | None,
    used_after: int | None,
    reserved_bytes: int,
) -> int:
    """The CUDA context: NVML's per-process figure less what the allocator reserved; failing
    that, the rise of the device's used memory across initialisation, less the same."""
    if process_bytes is not None:
        return max(0, process_bytes - reserved_bytes)
    if used_before is not None and used_after is not None:
        return max(0, used_after - used_before - reserved_bytes)
    return 0


class CudaMemory:
    """cuda:0 of this process (CUDA_VISIBLE_DEVICES names one GPU). Creates the context."""

    def __init__(self, uuid: str) -> None:
        import torch

        self._torch = torch
        self._nvml = NvmlProcessReader(uuid, os.getpid())
        used_before = self._nvml.device_used_bytes()
        torch.cuda.init()  # type: ignore[no-untyped-call]
        torch.empty(1, device="cuda:0")
        torch.cuda.synchronize()
        self.context_bytes = context_from_readings(
            self._nvml.process_bytes(),
            used_before,
            self._nvml.device_used_bytes(),
            int(torch.cuda.memory_reserved(0)),
        )
        self.total_bytes = int(torch.cuda.get_device_properties(0).total_memory)

    def held_bytes(self) -> int:
        torch_view = int(self._torch.cuda.memory_reserved(0)) + self.context_bytes
        return max(torch_view, self._nvml.process_bytes() or 0)

    def peak_bytes(self) -> int:
        torch_view = int(self._torch.cuda.max_memory_reserved(0)) + self.context_bytes
        return max(torch_view, self._nvml.process_bytes() or 0)

    def release_cached(self) -> None:
        self._torch.cuda.empty_cache()
        self._torch.cuda.reset_peak_memory_stats(0)

    def limit(self, admitted_bytes: int) -> None:
        """The allocator may hold what was admitted less the context, which it does not see:
        the process as a whole then stays within what the ledger admitted."""
        fraction = memory_fraction(admitted_bytes - self.context_bytes, self.total_bytes)
        self._torch.cuda.set_per_process_memory_fraction(fraction, 0)


def memory_fraction(admitted_bytes: int, total_bytes: int) -> float:
    """The allocator cap for what the ledger admitted: min(1, admitted / total), never 0."""
    if total_bytes <= 0:
        return 1.0
    return max(1e-3, min(1.0, admitted_bytes / total_bytes))
