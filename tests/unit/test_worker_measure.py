"""workers/measure.py: overlap tracking, peak arithmetic, sampling, progress throttling, readers."""

from __future__ import annotations

import mmap
import os
import threading
import time

import pytest

from gpuscribe.memory.types import MIB
from gpuscribe.workers.measure import (
    CpuMemory,
    NvmlProcessReader,
    OverlapTracker,
    PeakSampler,
    ProgressThrottle,
    TaskPeak,
    context_from_readings,
    memory_fraction,
    parse_status_bytes,
    read_status_bytes,
)


class FakeMemory:
    """A device whose holding the test sets; no high-water mark beyond what was set."""

    context_bytes = 100

    def __init__(self, held: int) -> None:
        self.held = held
        self.high = held
        self.releases = 0
        self.limits: list[int] = []
        self._lock = threading.Lock()

    def set(self, held: int) -> None:
        with self._lock:
            self.held = held
            self.high = max(self.high, held)

    def held_bytes(self) -> int:
        with self._lock:
            return self.held

    def peak_bytes(self) -> int:
        with self._lock:
            return self.high

    def release_cached(self) -> None:
        with self._lock:
            self.releases += 1
            self.high = self.held

    def limit(self, admitted_bytes: int) -> None:
        self.limits.append(admitted_bytes)


class NoHighWater(FakeMemory):
    """Only current readings: a spike is seen only if a sample lands on it."""

    def peak_bytes(self) -> int:
        return self.held_bytes()


# --- OverlapTracker ---------------------------------------------------------------------------
def test_a_task_alone_ran_alone() -> None:
    tracker = OverlapTracker()
    assert tracker.begin("a") is True
    assert tracker.end("a") is True
    assert tracker.active_count() == 0


def test_overlapping_tasks_both_did_not_run_alone() -> None:
    tracker = OverlapTracker()
    tracker.begin("a")
    assert tracker.begin("b") is False
    assert tracker.end("a") is False
    assert tracker.end("b") is False


def test_a_task_that_outlived_its_neighbour_still_overlapped() -> None:
    tracker = OverlapTracker()
    tracker.begin("a")
    tracker.begin("b")
    tracker.end("b")
    tracker.begin("c")  # a is still running: c overlaps a
    assert tracker.end("a") is False
    assert tracker.end("c") is False


def test_sequential_tasks_each_ran_alone() -> None:
    tracker = OverlapTracker()
    for task_id in ("a", "b", "c"):
        assert tracker.begin(task_id) is True
        assert tracker.end(task_id) is True


# --- TaskPeak ---------------------------------------------------------------------------------
def test_working_is_peak_above_baseline_and_never_negative() -> None:
    assert TaskPeak(peak_bytes=900, baseline_bytes=600, ran_alone=True).working_bytes == 300
    assert TaskPeak(peak_bytes=500, baseline_bytes=600, ran_alone=True).working_bytes == 0


# --- PeakSampler ------------------------------------------------------------------------------
def test_sampler_reports_peak_above_the_baseline_of_a_lone_task() -> None:
    memory = FakeMemory(held=1000)
    sampler = PeakSampler(memory, interval_seconds=0.005)
    sampler.start()
    try:
        sampler.begin("t")
        memory.set(1500)  # model loaded
        sampler.mark_baseline("t")
        memory.set(1800)
        memory.set(1600)
        peak = sampler.end("t")
    finally:
        sampler.stop()
    assert peak == TaskPeak(peak_bytes=1800, baseline_bytes=1500, ran_alone=True)
    assert peak.working_bytes == 300
    assert memory.releases == 1  # alone: the cache was emptied before the baseline


def test_background_sampling_catches_a_spike_gone_before_the_end() -> None:
    memory = NoHighWater(held=1000)
    sampler = PeakSampler(memory, interval_seconds=0.002)
    sampler.start()
    try:
        sampler.begin("t")
        sampler.mark_baseline("t")
        memory.set(5000)
        time.sleep(0.1)
        memory.set(1000)
        peak = sampler.end("t")
    finally:
        sampler.stop()
    assert peak is not None and peak.peak_bytes == 5000 and peak.working_bytes == 4000


def test_overlapping_tasks_do_not_empty_the_cache_and_are_not_alone() -> None:
    memory = FakeMemory(held=1000)
    sampler = PeakSampler(memory, interval_seconds=0.005)
    sampler.begin("a")
    sampler.begin("b")
    sampler.mark_baseline("a")
    sampler.mark_baseline("b")
    memory.set(1400)
    first, second = sampler.end("a"), sampler.end("b")
    assert memory.releases == 0
    assert first is not None and not first.ran_alone and first.peak_bytes == 1400
    assert second is not None and not second.ran_alone


def test_a_task_that_failed_before_its_baseline_has_no_peak() -> None:
    sampler = PeakSampler(FakeMemory(held=1000))
    sampler.begin("t")
    assert sampler.end("t") is None
    sampler.begin("u")  # the failed task left no overlap behind
    sampler.mark_baseline("u")
    peak = sampler.end("u")
    assert peak is not None and peak.ran_alone


def test_a_failing_reader_does_not_break_the_sampler() -> None:
    class Broken(FakeMemory):
        def held_bytes(self) -> int:
            raise OSError("device gone")

    sampler = PeakSampler(Broken(held=0))
    sampler.begin("t")
    sampler.mark_baseline("t")
    peak = sampler.end("t")
    assert peak is not None and peak.baseline_bytes == 0


# --- ProgressThrottle -------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_passes_rising_values_at_most_once_per_interval() -> None:
    clock = Clock()
    throttle = ProgressThrottle(0.25, clock)
    assert throttle.offer(0.1) == 0.1
    clock.now = 0.1
    assert throttle.offer(0.2) is None  # too soon
    clock.now = 0.3
    assert throttle.offer(0.3) == 0.3
    clock.now = 0.9
    assert throttle.offer(0.25) is None  # never backwards
    assert throttle.offer(0.3) is None  # nor the same again
    clock.now = 1.5
    assert throttle.offer(1.7) == 1.0  # clamped


# --- readers ----------------------------------------------------------------------------------
def test_parse_status_bytes() -> None:
    text = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
    assert parse_status_bytes(text, "VmRSS") == 1024 * 1024
    assert parse_status_bytes(text, "VmHWM") == 2048 * 1024
    with pytest.raises(ValueError, match="VmSwap"):
        parse_status_bytes(text, "VmSwap")


def test_cpu_memory_sees_an_allocation_and_its_high_water_mark() -> None:
    memory = CpuMemory()
    assert memory.context_bytes == 0
    memory.release_cached()
    before = memory.held_bytes()
    # 64 MiB of fresh pages, touched. An anonymous mapping of its own: a heap allocation may
    # reuse pages earlier tests freed but the allocator kept resident (a library in this
    # process may raise malloc's mmap threshold), and then the resident size does not move.
    block = mmap.mmap(-1, 64 * MIB)
    block.write(b"\x01" * (64 * MIB))
    assert memory.held_bytes() - before >= 48 * MIB
    block.close()
    assert memory.peak_bytes() - before >= 48 * MIB
    assert read_status_bytes("VmRSS") > 0


def test_context_from_nvml_process_figure_less_the_allocator() -> None:
    assert context_from_readings(1300, None, None, reserved_bytes=100) == 1200
    assert context_from_readings(None, 5000, 6300, reserved_bytes=100) == 1200
    assert context_from_readings(None, None, None, reserved_bytes=100) == 0
    assert context_from_readings(50, None, None, reserved_bytes=100) == 0


def test_memory_fraction_caps_at_one() -> None:
    assert memory_fraction(40, 80) == 0.5
    assert memory_fraction(200, 80) == 1.0
    assert memory_fraction(10, 0) == 1.0
    assert memory_fraction(0, 80) > 0.0


def test_nvml_reader_without_a_gpu_answers_none() -> None:
    reader = NvmlProcessReader("GPU-00000000-0000-0000-0000-000000000000", os.getpid())
    assert reader.process_bytes() is None
    assert reader.device_used_bytes() is None


def test_throttle_finish_reports_one_exactly_once() -> None:
    throttle = ProgressThrottle(0.25, Clock())
    assert throttle.offer(0.5) == 0.5
    assert throttle.finish() == 1.0
    assert throttle.finish() is None
    done = ProgressThrottle(0.25, Clock())
    assert done.offer(1.0) == 1.0
    assert done.finish() is None
