"""Simulated GPUs (`--simulate-gpus 2x24GiB`, `1x80GiB:NVIDIA H100 80GB HBM3,1x40GiB`,
`1x24GiB+6GiB`: a device on which a process outside gpuscribe holds 6 GiB from the start).

Memory is accounted by owning process, as NVML reports it: simulated workers `allocate` and
`free` what their tasks would hold, `set_foreign` stands for a process outside gpuscribe. An
allocation that would take a device past its total raises `SimulatedOutOfMemory`, as a real
device would, and `peak_used` lets tests prove the cap was never crossed.

A process outside gpuscribe can also be driven from outside the service, at run time: the file
`foreign_file` (`<data_dir>/simulated-foreign.json` for `serve --simulate-gpus`), when present,
maps GPU indexes or UUIDs to the bytes such a process holds there, e.g. `{"0": 6442450944}`; it
is read again whenever it changes. Real GPUs never read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpuscribe.telemetry.base import DeviceKind, DeviceReading, ProcessMemory

log = logging.getLogger(__name__)

DEFAULT_FOREIGN_PID = 1  # init: never a gpuscribe worker
FILE_FOREIGN_PID = 2  # the process of the foreign file (kthreadd: never a gpuscribe worker)
FOREIGN_FILE_NAME = "simulated-foreign.json"

_UNITS = {"GIB": 1024**3, "GB": 1000**3, "MIB": 1024**2, "MB": 1000**2}
_SIZE = r"\d+(?:\.\d+)?"
_ITEM = re.compile(
    rf"^(?P<count>\d+)\s*x\s*(?P<size>{_SIZE})\s*(?P<unit>[a-z]+)"
    rf"(?:\s*\+\s*(?P<foreign>{_SIZE})\s*(?P<foreign_unit>[a-z]+))?$",
    re.I,
)


class SimulatedOutOfMemory(RuntimeError):
    """An allocation would take a simulated device past its total memory."""


class SimulatedGpuLost(RuntimeError):
    """The simulated device was marked lost; nothing can be allocated on it."""


@dataclass(frozen=True, slots=True)
class SimulatedDeviceSpec:
    total_bytes: int
    name: str
    foreign_bytes: int = 0  # held by a process outside gpuscribe from the start


def parse_simulation_spec(spec: str) -> list[SimulatedDeviceSpec]:
    """One spec per device, in order: `2x24GiB` gives two. Raises ValueError naming the bad part."""
    if not spec.strip():
        raise ValueError("empty GPU simulation spec: expected e.g. '2x24GiB' or '1x80GiB,1x40GiB'")
    devices: list[SimulatedDeviceSpec] = []
    for item in spec.split(","):
        devices.extend(_parse_item(item.strip()))
    return devices


def _parse_item(item: str) -> list[SimulatedDeviceSpec]:
    shape, _, name = item.partition(":")
    match = _ITEM.match(shape.strip())
    hint = (
        "expected <count>x<size><GiB|GB|MiB|MB>[+<size held by another process>][:<name>], "
        "e.g. '2x24GiB' or '1x24GiB+6GiB'"
    )
    if match is None:
        raise ValueError(f"bad GPU simulation item {item!r}: {hint}")
    for unit in (match["unit"], match["foreign_unit"]):
        if unit is not None and unit.upper() not in _UNITS:
            raise ValueError(f"bad size unit {unit!r} in GPU simulation item {item!r}: {hint}")
    unit = match["unit"].upper()
    count = int(match["count"])
    total = int(float(match["size"]) * _UNITS[unit])
    if count < 1 or total < 1:
        raise ValueError(f"GPU simulation item {item!r} needs at least one device of some memory")
    foreign = 0
    if match["foreign"] is not None:
        foreign = int(float(match["foreign"]) * _UNITS[match["foreign_unit"].upper()])
    if foreign >= total:
        raise ValueError(f"GPU simulation item {item!r}: the other process holds all its memory")
    label = f"{match['size']}{_canonical_unit(unit)}"
    device_name = name.strip() or f"Simulated GPU {label}"
    return [SimulatedDeviceSpec(total, device_name, foreign) for _ in range(count)]


def _canonical_unit(unit: str) -> str:
    return {"GIB": "GiB", "GB": "GB", "MIB": "MiB", "MB": "MB"}[unit]


@dataclass(slots=True)
class _Device:
    index: int
    uuid: str
    spec: SimulatedDeviceSpec
    holders: dict[int, int] = field(default_factory=dict)
    peak: int = 0
    lost: bool = False

    @property
    def used(self) -> int:
        return sum(self.holders.values())


class SimulatedGpus:
    """`GpuTelemetry` over simulated devices, plus the memory operations simulated workers use."""

    def __init__(self, spec: str, *, foreign_file: Path | None = None) -> None:
        digest = hashlib.sha256("".join(spec.split()).encode()).hexdigest()[:8]
        devices = [
            _Device(index, f"SIM-{index}-{digest}", device)
            for index, device in enumerate(parse_simulation_spec(spec))
        ]
        for device in devices:
            if device.spec.foreign_bytes:
                device.holders[DEFAULT_FOREIGN_PID] = device.spec.foreign_bytes
                device.peak = device.spec.foreign_bytes
        self._devices = {device.uuid: device for device in devices}
        self._lock = threading.Lock()
        self._foreign_file = foreign_file
        self._foreign_text: str | None = None  # the foreign file as last applied

    # GpuTelemetry -----------------------------------------------------------------------------

    def discover(self) -> list[DeviceReading]:
        with self._lock:
            self._follow_foreign_file()
            return [self._reading(device) for device in self._devices.values()]

    def read(self, uuid: str) -> DeviceReading:
        """One device, fresh. An unknown UUID is a caller's error (KeyError)."""
        with self._lock:
            self._follow_foreign_file()
            return self._reading(self._device(uuid))

    def close(self) -> None:
        """Nothing to release: the simulation lives in this object."""

    # Memory -----------------------------------------------------------------------------------

    def allocate(self, uuid: str, pid: int, nbytes: int) -> None:
        """`pid` takes `nbytes` more on the device, or SimulatedOutOfMemory and nothing changes."""
        _check_bytes(nbytes)
        with self._lock:
            device = self._device(uuid)
            self._check_room(device, nbytes)
            device.holders[pid] = device.holders.get(pid, 0) + nbytes
            device.peak = max(device.peak, device.used)

    def free(self, uuid: str, pid: int, nbytes: int) -> None:
        """`pid` gives back `nbytes` (at most what it holds)."""
        _check_bytes(nbytes)
        with self._lock:
            device = self._device(uuid)
            remaining = device.holders.get(pid, 0) - nbytes
            if remaining > 0:
                device.holders[pid] = remaining
            else:
                device.holders.pop(pid, None)

    def free_all(self, uuid: str, pid: int) -> None:
        """Everything `pid` holds goes, as when a process exits."""
        with self._lock:
            self._device(uuid).holders.pop(pid, None)

    def set_foreign(self, uuid: str, nbytes: int, pid: int = DEFAULT_FOREIGN_PID) -> None:
        """A process outside gpuscribe now holds exactly `nbytes` (0: it is gone)."""
        _check_bytes(nbytes)
        with self._lock:
            device = self._device(uuid)
            held = device.holders.pop(pid, 0)
            try:
                self._check_room(device, nbytes)
            except (SimulatedOutOfMemory, SimulatedGpuLost):
                device.holders[pid] = held
                raise
            if nbytes:
                device.holders[pid] = nbytes
            device.peak = max(device.peak, device.used)

    def held_by(self, uuid: str, pid: int) -> int:
        with self._lock:
            return self._device(uuid).holders.get(pid, 0)

    def peak_used(self, uuid: str) -> int:
        """The most the device ever held since start or `reset_peak`."""
        with self._lock:
            return self._device(uuid).peak

    def reset_peak(self, uuid: str) -> None:
        with self._lock:
            device = self._device(uuid)
            device.peak = device.used

    # Faults -----------------------------------------------------------------------------------

    def lose(self, uuid: str) -> None:
        with self._lock:
            self._device(uuid).lost = True

    def restore(self, uuid: str) -> None:
        with self._lock:
            self._device(uuid).lost = False

    # Internals (called with the lock held) ----------------------------------------------------

    def _follow_foreign_file(self) -> None:
        """Apply the foreign file if its text changed since it was last applied (a small file,
        read at each reading: simulated GPUs only)."""
        if self._foreign_file is None:
            return
        try:
            text: str | None = self._foreign_file.read_text()
        except FileNotFoundError:
            text = None
        except OSError as exc:
            log.warning("simulated GPUs: cannot read %s (%s)", self._foreign_file, exc)
            return
        if text == self._foreign_text:
            return
        self._foreign_text = text
        wanted = {} if text is None else _parse_foreign(text, self._foreign_file)
        if wanted is None:
            return
        for device in self._devices.values():
            nbytes = wanted.get(str(device.index), wanted.get(device.uuid, 0))
            self._hold_foreign(device, nbytes)

    @staticmethod
    def _hold_foreign(device: _Device, nbytes: int) -> None:
        """The file's process holds `nbytes` on the device, or what fits, as a process whose
        allocations fail once the device is full would."""
        device.holders.pop(FILE_FOREIGN_PID, None)
        fits = max(0, min(nbytes, device.spec.total_bytes - device.used))
        if fits < nbytes:
            log.warning(
                "simulated GPU %s: the foreign file asks for %d bytes, %d fit", device.uuid,
                nbytes, fits,
            )  # fmt: skip
        if fits:
            device.holders[FILE_FOREIGN_PID] = fits
            device.peak = max(device.peak, device.used)

    def _device(self, uuid: str) -> _Device:
        try:
            return self._devices[uuid]
        except KeyError:
            known = ", ".join(self._devices)
            raise KeyError(f"no simulated GPU {uuid!r} (known: {known})") from None

    @staticmethod
    def _check_room(device: _Device, nbytes: int) -> None:
        if device.lost:
            raise SimulatedGpuLost(f"simulated GPU {device.uuid} is lost")
        if device.used + nbytes > device.spec.total_bytes:
            raise SimulatedOutOfMemory(
                f"simulated GPU {device.uuid}: {nbytes} bytes requested, "
                f"{device.spec.total_bytes - device.used} of {device.spec.total_bytes} free"
            )

    @staticmethod
    def _reading(device: _Device) -> DeviceReading:
        total, used = device.spec.total_bytes, device.used
        busy = sum(1 for held in device.holders.values() if held > 0)
        utilization = 100.0 * (1.0 - 0.5**busy)  # 0, 50, 75, 87.5 ... with each holder
        return DeviceReading(
            index=device.index,
            uuid=device.uuid,
            name=device.spec.name,
            kind=DeviceKind.SIMULATED,
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=total - used,
            read_at=time.time(),
            memory_driver_reserved_bytes=0,
            utilization_percent=utilization,
            memory_utilization_percent=utilization * 0.6,
            temperature_c=30.0 + 0.5 * utilization,
            power_watts=50.0 + 3.0 * utilization,
            processes=tuple(
                ProcessMemory(pid, held) for pid, held in sorted(device.holders.items())
            ),
            healthy=not device.lost,
            error="simulated GPU lost" if device.lost else None,
        )


def _parse_foreign(text: str, path: Path) -> dict[str, int] | None:
    """{GPU index or UUID: bytes}; None (with a warning) if the text is not such a map."""
    try:
        data = json.loads(text)
        return {str(key): max(0, int(value)) for key, value in data.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("simulated GPUs: ignored %s (%s)", path, exc)
        return None


def _check_bytes(nbytes: int) -> None:
    if nbytes < 0:
        raise ValueError(f"byte count must be zero or more, got {nbytes}")
