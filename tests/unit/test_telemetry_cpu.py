"""CpuTelemetry on this machine's /proc, and on a stand-in /proc for exact figures and fallbacks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from gpuscribe.telemetry.base import DeviceKind, GpuTelemetry
from gpuscribe.telemetry.cpu import CPU_UUID, CpuTelemetry

KIB = 1024

linux_only = pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="needs Linux /proc")


@linux_only
def test_reads_this_machine() -> None:
    telemetry: GpuTelemetry = CpuTelemetry(pids=lambda: {os.getpid()})
    (reading,) = telemetry.discover()
    assert reading.index == 0 and reading.uuid == CPU_UUID and reading.kind is DeviceKind.CPU
    assert reading.name.startswith("CPU (") and reading.name.endswith(")")
    assert reading.memory_total_bytes > 0
    assert 0 < reading.memory_used_bytes < reading.memory_total_bytes
    assert reading.memory_free_bytes == reading.memory_total_bytes - reading.memory_used_bytes
    assert reading.utilization_percent is None  # no delta on the first read
    assert reading.healthy and reading.error is None
    # This test process's resident memory is reported as one of the worker pids.
    assert reading.used_by({os.getpid()}) > 10 * 1024**2
    time.sleep(0.05)  # several clock ticks between reads
    second = telemetry.read(CPU_UUID)
    assert second.utilization_percent is not None and 0.0 <= second.utilization_percent <= 100.0
    telemetry.close()


def write_proc(root: Path, *, stat: str, meminfo: str, cpuinfo: str = "") -> None:
    root.mkdir(exist_ok=True)
    (root / "stat").write_text(stat)
    (root / "meminfo").write_text(meminfo)
    (root / "cpuinfo").write_text(cpuinfo)


MEMINFO = "MemTotal:       16000 kB\nMemFree:         2000 kB\nMemAvailable:    6000 kB\n"


def test_exact_figures_from_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_proc(
        proc,
        stat="cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4\n",
        meminfo=MEMINFO,
        cpuinfo="processor\t: 0\nmodel name\t: Test CPU 9000\n",
    )
    (proc / "41").mkdir()
    (proc / "41" / "status").write_text("Name:\tworker\nVmRSS:\t    2048 kB\n")
    telemetry = CpuTelemetry(pids=lambda: {41, 99999}, proc_root=proc)
    first = telemetry.read(CPU_UUID)
    assert first.name == "CPU (Test CPU 9000)"
    assert first.memory_total_bytes == 16000 * KIB
    assert first.memory_used_bytes == 10000 * KIB
    assert first.memory_free_bytes == 6000 * KIB
    assert len(first.processes) == 1 and first.used_by({41}) == 2048 * KIB  # 99999: gone
    # 300 more busy jiffies (user+system), 100 more idle and iowait: 75 % busy.
    (proc / "stat").write_text("cpu  250 0 250 750 150 0 0 0 50 0\n")
    assert telemetry.read(CPU_UUID).utilization_percent == pytest.approx(75.0)
    # No time passed: the last figure stands.
    assert telemetry.read(CPU_UUID).utilization_percent == pytest.approx(75.0)


def test_unknown_uuid_is_a_key_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        CpuTelemetry(proc_root=tmp_path).read("GPU-0")


@pytest.mark.skipif(not hasattr(os, "sysconf"), reason="needs os.sysconf")
def test_without_proc_falls_back_to_sysconf(tmp_path: Path) -> None:
    telemetry = CpuTelemetry(pids=lambda: {os.getpid()}, proc_root=tmp_path / "missing")
    reading = telemetry.read(CPU_UUID)
    assert reading.memory_total_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 <= reading.memory_used_bytes <= reading.memory_total_bytes
    assert reading.utilization_percent is None
    assert reading.processes == ()
    assert reading.name.startswith("CPU (")
    assert telemetry.read(CPU_UUID).utilization_percent is None


@pytest.mark.skipif(sys.platform != "linux", reason="SC_AVPHYS_PAGES is Linux-only")
def test_partial_meminfo_falls_back_to_sysconf(tmp_path: Path) -> None:
    write_proc(tmp_path / "proc", stat="", meminfo="MemTotal:  16000 kB\n")
    reading = CpuTelemetry(proc_root=tmp_path / "proc").read(CPU_UUID)
    assert reading.memory_total_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert reading.memory_used_bytes > 0
