"""node.cluster: a device's JSON in a node's heartbeat record carries its memory warning."""

from __future__ import annotations

from gpuscribe.api.backend import DeviceView
from gpuscribe.memory.warning import MemoryWarning, WarningCondition
from gpuscribe.node.cluster import device_from_json, device_json
from gpuscribe.store.base import NodeRecord
from gpuscribe.telemetry.simulated import SimulatedGpus

NODE = NodeRecord("node-a", "worker", 1.0, 2.0, 62.0)


def view(warning: MemoryWarning | None) -> DeviceView:
    reading = SimulatedGpus("1x24GiB").discover()[0]
    return DeviceView(reading, 3, 4, 0, 5, (), False, memory_warning=warning)


def test_a_memory_warning_travels_in_the_heartbeat_record() -> None:
    warning = MemoryWarning(WarningCondition.FOREIGN_GROWTH, 1234.5, "other processes grew")
    back = device_from_json(device_json(view(warning)), NODE)
    assert back.memory_warning == warning
    assert back.node == "node-a"
    assert device_from_json(device_json(view(None)), NODE).memory_warning is None


def test_a_record_written_before_warnings_travelled_has_none() -> None:
    data = device_json(view(None))
    del data["memory_warning"]
    assert device_from_json(data, NODE).memory_warning is None
