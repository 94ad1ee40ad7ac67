"""Simulated GPUs: spec parsing, memory accounting by process, faults, thread safety."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from gpuscribe.memory.types import GIB, MIB
from gpuscribe.telemetry.base import DeviceKind, GpuTelemetry, ProcessMemory
from gpuscribe.telemetry.simulated import (
    DEFAULT_FOREIGN_PID,
    FILE_FOREIGN_PID,
    FOREIGN_FILE_NAME,
    SimulatedDeviceSpec,
    SimulatedGpuLost,
    SimulatedGpus,
    SimulatedOutOfMemory,
    parse_simulation_spec,
)


def test_parse_counts_sizes_and_names() -> None:
    assert parse_simulation_spec("2x24GiB") == [
        SimulatedDeviceSpec(24 * GIB, "Simulated GPU 24GiB"),
        SimulatedDeviceSpec(24 * GIB, "Simulated GPU 24GiB"),
    ]
    specs = parse_simulation_spec(" 1x80GiB:NVIDIA H100 80GB HBM3 , 1x40gb, 1x512MiB, 1x1.5GB ")
    assert specs == [
        SimulatedDeviceSpec(80 * GIB, "NVIDIA H100 80GB HBM3"),
        SimulatedDeviceSpec(40 * 1000**3, "Simulated GPU 40GB"),
        SimulatedDeviceSpec(512 * MIB, "Simulated GPU 512MiB"),
        SimulatedDeviceSpec(1_500_000_000, "Simulated GPU 1.5GB"),
    ]
    assert parse_simulation_spec("1x100MB")[0].total_bytes == 100 * 1000**2


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("", "empty"),
        ("2x24", "'2x24'"),
        ("2x24TiB", "'TiB'"),
        ("x24GiB", "'x24GiB'"),
        ("0x24GiB", "'0x24GiB'"),
        ("1x0GiB", "'1x0GiB'"),
        ("2x24GiB,", "''"),
        ("2x24GiB,1y40GiB", "'1y40GiB'"),
        ("1x24GiB+6TiB", "'TiB'"),
        ("1x24GiB+24GiB", "holds all its memory"),
        ("1x24GiB+", "'1x24GiB\\+'"),
    ],
)
def test_malformed_spec_names_the_bad_part(spec: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_simulation_spec(spec)


def test_a_plus_size_is_held_by_another_process_from_the_start() -> None:
    specs = parse_simulation_spec("1x24GiB+6GiB:NVIDIA L4, 1x24GiB + 512MiB")
    assert specs == [
        SimulatedDeviceSpec(24 * GIB, "NVIDIA L4", 6 * GIB),
        SimulatedDeviceSpec(24 * GIB, "Simulated GPU 24GiB", 512 * MIB),
    ]
    gpus = SimulatedGpus("1x24GiB+6GiB,1x24GiB")
    shared, alone = gpus.discover()
    assert shared.memory_used_bytes == 6 * GIB and shared.memory_free_bytes == 18 * GIB
    assert shared.used_by({DEFAULT_FOREIGN_PID}) == 6 * GIB
    assert alone.memory_used_bytes == 0
    gpus.set_foreign(shared.uuid, 0)  # the process can go, like any foreign process
    assert gpus.read(shared.uuid).memory_used_bytes == 0


def test_devices_have_stable_uuids_and_fresh_readings() -> None:
    gpus = SimulatedGpus("1x80GiB,1x40GiB")
    telemetry: GpuTelemetry = gpus
    readings = telemetry.discover()
    assert [r.index for r in readings] == [0, 1]
    assert [r.uuid for r in readings] == [
        r.uuid for r in SimulatedGpus("1x80GiB, 1x40GiB").discover()
    ]
    assert readings[0].uuid.startswith("SIM-0-") and readings[1].uuid.startswith("SIM-1-")
    assert readings[0].uuid != SimulatedGpus("1x80GiB").discover()[0].uuid  # spec in the hash
    first = readings[0]
    assert first.kind is DeviceKind.SIMULATED and first.healthy
    assert first.memory_total_bytes == 80 * GIB and first.memory_used_bytes == 0
    assert first.memory_free_bytes == 80 * GIB and first.processes == ()
    assert first.utilization_percent == 0.0
    telemetry.close()


def test_allocate_and_free_by_process() -> None:
    gpus = SimulatedGpus("1x24GiB")
    uuid = gpus.discover()[0].uuid
    gpus.allocate(uuid, 100, 3 * GIB)
    gpus.allocate(uuid, 100, GIB)
    gpus.allocate(uuid, 200, 2 * GIB)
    reading = gpus.read(uuid)
    assert reading.memory_used_bytes == 6 * GIB
    assert reading.memory_free_bytes == 18 * GIB
    assert reading.used_by({100}) == 4 * GIB and reading.used_by({200}) == 2 * GIB
    gpus.free(uuid, 100, GIB)
    assert gpus.held_by(uuid, 100) == 3 * GIB
    gpus.free(uuid, 100, 10 * GIB)  # more than held: all of it, never negative
    assert gpus.held_by(uuid, 100) == 0
    gpus.free_all(uuid, 200)
    assert gpus.read(uuid).memory_used_bytes == 0 and gpus.read(uuid).processes == ()
    assert gpus.peak_used(uuid) == 6 * GIB
    gpus.reset_peak(uuid)
    assert gpus.peak_used(uuid) == 0


def test_out_of_memory_changes_nothing() -> None:
    gpus = SimulatedGpus("1x8GiB")
    uuid = gpus.discover()[0].uuid
    gpus.allocate(uuid, 1, 6 * GIB)
    with pytest.raises(SimulatedOutOfMemory, match="free"):
        gpus.allocate(uuid, 2, 3 * GIB)
    gpus.allocate(uuid, 2, 2 * GIB)  # exactly full is allowed
    assert gpus.read(uuid).memory_free_bytes == 0
    assert gpus.peak_used(uuid) == 8 * GIB
    with pytest.raises(ValueError):
        gpus.allocate(uuid, 2, -1)


def test_foreign_process_counts_against_the_device() -> None:
    gpus = SimulatedGpus("1x10GiB")
    uuid = gpus.discover()[0].uuid
    gpus.set_foreign(uuid, 4 * GIB)
    gpus.set_foreign(uuid, 5 * GIB)  # sets, does not add
    gpus.set_foreign(uuid, GIB, pid=4242)
    reading = gpus.read(uuid)
    assert reading.used_by({DEFAULT_FOREIGN_PID}) == 5 * GIB and reading.used_by({4242}) == GIB
    with pytest.raises(SimulatedOutOfMemory):
        gpus.allocate(uuid, 7, 5 * GIB)
    with pytest.raises(SimulatedOutOfMemory):
        gpus.set_foreign(uuid, 10 * GIB)
    assert gpus.held_by(uuid, DEFAULT_FOREIGN_PID) == 5 * GIB  # unchanged after the refusal
    gpus.set_foreign(uuid, 0)
    assert gpus.read(uuid).memory_used_bytes == GIB


def test_readings_rise_with_holders() -> None:
    gpus = SimulatedGpus("1x24GiB")
    uuid = gpus.discover()[0].uuid
    previous = gpus.read(uuid)
    for pid in (1, 2, 3):
        gpus.allocate(uuid, pid, GIB)
        now = gpus.read(uuid)
        assert now.utilization_percent is not None and previous.utilization_percent is not None
        assert now.utilization_percent > previous.utilization_percent
        assert now.temperature_c is not None and previous.temperature_c is not None
        assert now.temperature_c > previous.temperature_c
        assert now.power_watts is not None and previous.power_watts is not None
        assert now.power_watts > previous.power_watts
        previous = now
    assert previous.utilization_percent is not None and previous.utilization_percent < 100.0


def test_lost_device_reads_unhealthy_until_restored() -> None:
    gpus = SimulatedGpus("2x24GiB")
    lost, other = (r.uuid for r in gpus.discover())
    gpus.allocate(lost, 5, GIB)
    gpus.lose(lost)
    reading = gpus.read(lost)
    assert not reading.healthy and reading.error
    assert gpus.read(other).healthy
    with pytest.raises(SimulatedGpuLost):
        gpus.allocate(lost, 5, GIB)
    gpus.free_all(lost, 5)  # a dying process still releases
    gpus.restore(lost)
    assert gpus.read(lost).healthy and gpus.read(lost).memory_used_bytes == 0


def test_unknown_uuid_is_a_key_error() -> None:
    gpus = SimulatedGpus("1x24GiB")
    with pytest.raises(KeyError, match="GPU-nope"):
        gpus.read("GPU-nope")


def test_concurrent_allocations_never_exceed_the_total() -> None:
    gpus = SimulatedGpus("1x1GiB")
    uuid = gpus.discover()[0].uuid
    chunk = 10 * MIB
    refused = [0] * 8

    def worker(pid: int) -> None:
        for _ in range(200):
            try:
                gpus.allocate(uuid, pid, chunk)
            except SimulatedOutOfMemory:
                refused[pid] += 1
                gpus.free(uuid, pid, chunk * 3)

    threads = [threading.Thread(target=worker, args=(pid,)) for pid in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reading = gpus.read(uuid)
    assert gpus.peak_used(uuid) <= GIB
    assert sum(refused) > 0
    assert reading.memory_used_bytes == sum(gpus.held_by(uuid, pid) for pid in range(8))
    assert reading.memory_used_bytes + reading.memory_free_bytes == GIB


def test_a_foreign_file_drives_a_process_outside_gpuscribe_at_run_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FOREIGN_FILE_NAME
    gpus = SimulatedGpus("2x8GiB", foreign_file=path)
    uuid0, uuid1 = (d.uuid for d in gpus.discover())
    assert gpus.read(uuid0).memory_used_bytes == 0  # no file: nothing foreign

    path.write_text(json.dumps({"0": 2 * GIB, uuid1: GIB}))
    assert gpus.read(uuid0).processes == (ProcessMemory(FILE_FOREIGN_PID, 2 * GIB),)
    assert gpus.read(uuid1).memory_used_bytes == GIB

    gpus.allocate(uuid0, 4242, 5 * GIB)
    path.write_text(json.dumps({"0": 4 * GIB}))  # grows, but only 3 GiB are left
    caplog.set_level(logging.WARNING, logger="gpuscribe.telemetry.simulated")
    assert gpus.read(uuid0).memory_used_bytes == 8 * GIB
    assert "the foreign file asks for" in caplog.text
    assert gpus.read(uuid1).memory_used_bytes == 0  # no longer named: gone

    path.write_text("{not json")  # a broken file changes nothing
    assert gpus.read(uuid0).memory_used_bytes == 8 * GIB
    path.unlink()  # no file: the process is gone
    assert gpus.read(uuid0).memory_used_bytes == 5 * GIB
