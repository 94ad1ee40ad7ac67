"""node.devices: which devices the `devices` setting selects, and what a slot counts as foreign."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpuscribe.config import ConfigError, load_settings
from gpuscribe.memory.ledger import DeviceLedger
from gpuscribe.memory.types import GIB
from gpuscribe.node.devices import DeviceSlot, select_devices
from gpuscribe.node.workers import SIMULATED_PID_BASE, make_worker
from gpuscribe.telemetry.base import DeviceReading
from gpuscribe.telemetry.cpu import CpuTelemetry
from gpuscribe.telemetry.simulated import SimulatedGpus
from gpuscribe.workers.messages import DeviceRef


@pytest.fixture
def gpus() -> SimulatedGpus:
    return SimulatedGpus("3x24GiB:NVIDIA H200")


@pytest.fixture
def readings(gpus: SimulatedGpus) -> list[DeviceReading]:
    return gpus.discover()


def indexes(chosen: list[DeviceReading]) -> list[int]:
    return [r.index for r in chosen]


@pytest.mark.parametrize("wanted", ["", "  ", ",", "cpu", " cpu "])
def test_empty_or_cpu_selects_every_device(readings: list[DeviceReading], wanted: str) -> None:
    assert indexes(select_devices(readings, wanted)) == [0, 1, 2]


def test_selects_by_index_in_device_order(readings: list[DeviceReading]) -> None:
    assert indexes(select_devices(readings, "2,0")) == [0, 2]
    assert indexes(select_devices(readings, " 1 ")) == [1]


def test_selects_by_uuid(readings: list[DeviceReading]) -> None:
    uuid = readings[1].uuid
    chosen = select_devices(readings, uuid)
    assert [r.uuid for r in chosen] == [uuid]


def test_index_and_uuid_mixed(readings: list[DeviceReading]) -> None:
    chosen = select_devices(readings, f"0,{readings[2].uuid}")
    assert indexes(chosen) == [0, 2]


def test_a_device_named_twice_is_chosen_once(readings: list[DeviceReading]) -> None:
    chosen = select_devices(readings, f"1,{readings[1].uuid},1")
    assert indexes(chosen) == [1]


def test_unknown_index_is_a_config_error_naming_it(readings: list[DeviceReading]) -> None:
    with pytest.raises(ConfigError) as raised:
        select_devices(readings, "0,7")
    message = str(raised.value)
    assert "devices='0,7'" in message
    assert "'7'" in message
    assert "'0'" not in message.split("known")[0]  # the found one is not called missing
    for r in readings:  # the message lists what is there
        assert r.uuid in message


def test_unknown_uuid_is_a_config_error_naming_it(readings: list[DeviceReading]) -> None:
    with pytest.raises(ConfigError, match="GPU-does-not-exist"):
        select_devices(readings, "GPU-does-not-exist")


def test_config_error_is_a_value_error(readings: list[DeviceReading]) -> None:
    with pytest.raises(ValueError):
        select_devices(readings, "3")


@pytest.mark.parametrize("wanted", ["0", "1", "GPU-0a1b"])
def test_naming_a_gpu_on_a_machine_without_one_is_a_config_error(wanted: str) -> None:
    cpu = CpuTelemetry().discover()
    with pytest.raises(ConfigError) as raised:
        select_devices(cpu, wanted)  # never silently the CPU
    assert f"devices={wanted!r}" in str(raised.value)
    assert "devices=cpu" in str(raised.value)
    assert raised.value.setting == "devices"


def test_cpu_or_nothing_selects_the_cpu() -> None:
    cpu = CpuTelemetry().discover()
    assert select_devices(cpu, "cpu") == cpu
    assert select_devices(cpu, "") == cpu


def simulated_slot(gpus: SimulatedGpus, tmp_path: Path) -> DeviceSlot:
    """The first simulated GPU's slot: its simulated worker (not started) and a fresh ledger."""
    settings = load_settings(flags={"data_dir": str(tmp_path)}, env={})
    reading = gpus.discover()[0]
    device = DeviceRef(reading.kind, reading.uuid, reading.index, reading.name)
    worker = make_worker(device, settings, gpus, lambda event: None)
    ledger = DeviceLedger(
        reading.uuid, reading.index, reading.memory_total_bytes,
        cap_fraction=0.9, reserve_bytes=GIB, max_tasks=5,
    )  # fmt: skip
    return DeviceSlot(device, ledger, worker, reading)


def test_foreign_bytes_leave_out_the_workers_own_memory(
    gpus: SimulatedGpus, tmp_path: Path
) -> None:
    slot = simulated_slot(gpus, tmp_path)
    reading = slot.reading
    assert slot.uuid == reading.uuid and slot.kind is reading.kind
    assert slot.foreign_bytes() == 0

    gpus.allocate(reading.uuid, SIMULATED_PID_BASE + reading.index, 3 * GIB)  # the worker's
    gpus.set_foreign(reading.uuid, 2 * GIB)  # someone else's
    slot.reading = gpus.read(reading.uuid)
    assert slot.reading.memory_used_bytes == 5 * GIB
    assert slot.attributed and slot.foreign_bytes() == 2 * GIB


def test_where_the_device_lists_no_worker_memory_gpuscribe_holds_what_it_admitted(
    gpus: SimulatedGpus, tmp_path: Path
) -> None:
    """A container's GPU lists no process of its own: counting gpuscribe's memory as another
    process's would charge it twice at admission."""
    slot = simulated_slot(gpus, tmp_path)
    ledger = slot.ledger
    ledger.charge_context(3 * GIB)  # what the ledger admitted for the worker
    gpus.set_foreign(slot.uuid, 5 * GIB)  # all of it unattributed, as the device lists it
    slot.reading = gpus.read(slot.uuid)
    assert not slot.attributed
    assert slot.foreign_bytes() == 2 * GIB
    ledger.charge_context(6 * GIB)  # more admitted than the device reports in use
    assert slot.foreign_bytes() == 0


def test_build_slot_limits_the_cpu_to_its_own_task_count(tmp_path: Path) -> None:
    from gpuscribe.node.devices import build_slot
    from gpuscribe.telemetry.cpu import CpuTelemetry

    settings = load_settings(
        flags={"data_dir": str(tmp_path), "max_tasks_per_gpu": 5, "cpu_max_tasks": 2}, env={}
    )
    reading = CpuTelemetry().discover()[0]
    made: list[DeviceRef] = []

    def worker_for(device: DeviceRef) -> Any:
        made.append(device)
        return object()

    slot = build_slot(reading, settings, worker_for)
    assert slot.ledger.max_tasks == 2
    assert slot.ledger.cap_bytes == int(reading.memory_total_bytes * 0.9)
    assert made == [slot.device] and slot.device.uuid == "cpu"
