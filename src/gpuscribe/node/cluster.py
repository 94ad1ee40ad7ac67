"""The cluster as every node sees it: each node heart-beats its record (role, devices) into the
shared store, and `/v1/gpus` shows the devices of every live node.

A device travels as a JSON object (its reading, less per-process figures, and its ledger);
a node whose lease ended leaves the view.
"""

from __future__ import annotations

import enum
from dataclasses import replace
from typing import Any

from gpuscribe.api.backend import DeviceView
from gpuscribe.memory.warning import MemoryWarning, WarningCondition
from gpuscribe.store.base import NodeRecord
from gpuscribe.telemetry.base import DeviceKind, DeviceReading


class Role(enum.StrEnum):
    SERVE = "serve"  # HTTP API and workers on this machine's devices
    API = "api"  # HTTP API only (`serve --no-workers`)
    WORKER = "worker"  # workers only (`worker`)

    @property
    def has_workers(self) -> bool:
        return self is not Role.API


_READING_FIELDS = (
    "index", "uuid", "name", "memory_total_bytes", "memory_used_bytes", "memory_free_bytes",
    "read_at", "memory_driver_reserved_bytes", "utilization_percent",
    "memory_utilization_percent", "temperature_c", "power_watts", "driver_version", "healthy",
    "error",
)  # fmt: skip


def device_json(view: DeviceView) -> dict[str, Any]:
    r = view.reading
    data: dict[str, Any] = {name: getattr(r, name) for name in _READING_FIELDS}
    data["kind"] = r.kind.value
    data["compute_capability"] = (
        None if r.compute_capability is None else list(r.compute_capability)
    )
    data.update(
        memory_reserved_bytes=view.memory_reserved_bytes,
        memory_cap_bytes=view.memory_cap_bytes,
        tasks_running=view.tasks_running,
        max_tasks=view.max_tasks,
        resident_models=list(view.resident_models),
        draining=view.draining,
        memory_warning=_warning_json(view.memory_warning),
    )
    return data


def _warning_json(warning: MemoryWarning | None) -> dict[str, Any] | None:
    if warning is None:
        return None
    return {
        "condition": warning.condition.value,
        "since": warning.since,
        "message": warning.message,
    }


def _warning_from_json(data: dict[str, Any] | None) -> MemoryWarning | None:
    """A record written before warnings travelled has none."""
    if not data:
        return None
    return MemoryWarning(WarningCondition(data["condition"]), float(data["since"]), data["message"])


def device_from_json(data: dict[str, Any], node: NodeRecord) -> DeviceView:
    values = {name: data.get(name) for name in _READING_FIELDS}
    capability = data.get("compute_capability")
    reading = DeviceReading(
        **values,  # type: ignore[arg-type]
        kind=DeviceKind(data["kind"]),
        compute_capability=None if capability is None else (capability[0], capability[1]),
    )
    return DeviceView(
        reading=reading,
        memory_reserved_bytes=int(data["memory_reserved_bytes"]),
        memory_cap_bytes=int(data["memory_cap_bytes"]),
        tasks_running=int(data["tasks_running"]),
        max_tasks=int(data["max_tasks"]),
        resident_models=tuple(data["resident_models"]),
        draining=bool(data["draining"]),
        node=node.name,
        heartbeat_at=node.heartbeat_at,
        memory_warning=_warning_from_json(data.get("memory_warning")),
    )


def cluster_devices(
    own: list[DeviceView], own_node: NodeRecord, others: list[NodeRecord]
) -> list[DeviceView]:
    """This node's devices, fresh, then every other live node's as it last heart-beat them;
    by node name, then device index."""
    views = [replace(v, node=own_node.name, heartbeat_at=own_node.heartbeat_at) for v in own]
    for record in others:
        if record.name != own_node.name:
            views.extend(device_from_json(d, record) for d in record.devices)
    return sorted(views, key=lambda v: (v.node, v.reading.index))
