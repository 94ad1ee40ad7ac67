"""telemetry.history: the last samples of each device, oldest first, the oldest dropped."""

from __future__ import annotations

import pytest

from gpuscribe.memory.types import GIB
from gpuscribe.telemetry.base import DeviceKind, DeviceReading
from gpuscribe.telemetry.history import DeviceHistory, DeviceSample


def sample(at: float, used: int = GIB) -> DeviceSample:
    return DeviceSample(at, used, 0, 2 * GIB, 20 * GIB, 50.0, 60.0, 200.0)


def test_keeps_the_newest_samples_of_each_device() -> None:
    history = DeviceHistory(max_samples=3)
    for at in range(5):
        history.record("gpu-a", sample(float(at)))
    history.record("gpu-b", sample(10.0))
    assert [s.at for s in history.since("gpu-a", 0.0)] == [2.0, 3.0, 4.0]
    assert [s.at for s in history.since("gpu-b", 0.0)] == [10.0]


def test_since_leaves_out_older_samples_and_unknown_devices() -> None:
    history = DeviceHistory()
    for at in (1.0, 2.0, 3.0):
        history.record("gpu-a", sample(at))
    assert [s.at for s in history.since("gpu-a", 2.0)] == [2.0, 3.0]
    assert history.since("gpu-a", 3.5) == []
    assert history.since("no-such-gpu", 0.0) == []


def test_a_sample_takes_the_reading_and_the_ledger() -> None:
    reading = DeviceReading(
        index=0, uuid="u", name="GPU", kind=DeviceKind.SIMULATED,
        memory_total_bytes=24 * GIB, memory_used_bytes=9 * GIB, memory_free_bytes=15 * GIB,
        read_at=123.5, utilization_percent=75.0, temperature_c=67.0, power_watts=275.0,
    )  # fmt: skip
    taken = DeviceSample.of(reading, foreign_bytes=6 * GIB, reserved_bytes=4 * GIB, cap_bytes=21)
    assert taken == DeviceSample(123.5, 9 * GIB, 6 * GIB, 4 * GIB, 21, 75.0, 67.0, 275.0)


def test_needs_room_for_one_sample() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DeviceHistory(max_samples=0)
