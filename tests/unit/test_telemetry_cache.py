"""CachedTelemetry over simulated GPUs, with a controlled clock."""

from __future__ import annotations

import pytest

from gpuscribe.memory.types import GIB
from gpuscribe.telemetry.base import GpuTelemetry
from gpuscribe.telemetry.cache import CachedTelemetry
from gpuscribe.telemetry.simulated import SimulatedGpus


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup() -> tuple[SimulatedGpus, CachedTelemetry, Clock, str]:
    gpus = SimulatedGpus("2x24GiB")
    clock = Clock()
    cache = CachedTelemetry(gpus, ttl_seconds=1.0, clock=clock)
    return gpus, cache, clock, gpus.discover()[0].uuid


def test_read_is_served_from_cache_within_ttl(
    setup: tuple[SimulatedGpus, CachedTelemetry, Clock, str],
) -> None:
    gpus, cache, clock, uuid = setup
    assert cache.read(uuid).memory_used_bytes == 0
    gpus.allocate(uuid, 7, GIB)
    clock.now += 1.0
    assert cache.read(uuid).memory_used_bytes == 0  # still within the TTL
    clock.now += 0.01
    assert cache.read(uuid).memory_used_bytes == GIB


def test_fresh_bypasses_the_cache(setup: tuple[SimulatedGpus, CachedTelemetry, Clock, str]) -> None:
    gpus, cache, _clock, uuid = setup
    cache.read(uuid)
    gpus.allocate(uuid, 7, GIB)
    fresh: GpuTelemetry = cache.fresh()
    assert fresh is gpus
    assert fresh.read(uuid).memory_used_bytes == GIB
    assert cache.read(uuid).memory_used_bytes == 0


def test_discover_is_cached_and_fills_reads(
    setup: tuple[SimulatedGpus, CachedTelemetry, Clock, str],
) -> None:
    gpus, cache, clock, uuid = setup
    first = cache.discover()
    gpus.allocate(uuid, 7, GIB)
    assert cache.discover() == first
    assert cache.read(uuid) == first[0]
    clock.now += 2.0
    assert cache.discover()[0].memory_used_bytes == GIB


def test_invalidate_and_close(setup: tuple[SimulatedGpus, CachedTelemetry, Clock, str]) -> None:
    gpus, cache, _clock, uuid = setup
    cache.read(uuid)
    gpus.allocate(uuid, 7, GIB)
    cache.invalidate()
    assert cache.read(uuid).memory_used_bytes == GIB
    cache.close()


def test_zero_ttl_always_reads_through() -> None:
    gpus = SimulatedGpus("1x24GiB")
    uuid = gpus.discover()[0].uuid
    clock = Clock()
    cache = CachedTelemetry(gpus, ttl_seconds=0.0, clock=clock)
    cache.read(uuid)
    gpus.allocate(uuid, 7, GIB)
    clock.now += 0.001
    assert cache.read(uuid).memory_used_bytes == GIB
    with pytest.raises(ValueError):
        CachedTelemetry(gpus, ttl_seconds=-1.0)
