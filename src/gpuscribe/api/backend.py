"""What the HTTP layer needs from a running node. The node implements it; tests may use a node
built on the in-memory store and simulated GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gpuscribe.config import Settings
from gpuscribe.domain import NewTask, Task
from gpuscribe.memory.types import MemoryEstimate, ProfileKey
from gpuscribe.metrics import Metrics
from gpuscribe.store.base import TaskStore
from gpuscribe.telemetry.base import DeviceReading
from gpuscribe.telemetry.history import DeviceSample


class QueueFull(Exception):
    """The queue holds `max_queue_length` tasks: answer 429 with Retry-After."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as `GET /v1/gpus` and `gpuscribe gpus` show it."""

    reading: DeviceReading
    memory_reserved_bytes: int  # what gpuscribe has admitted on it
    memory_cap_bytes: int
    tasks_running: int
    max_tasks: int
    resident_models: tuple[str, ...]
    draining: bool
    node: str = ""  # the node that drives it (in a cluster, every node's devices are shown)
    heartbeat_at: float | None = None  # that node's last heartbeat


@dataclass(frozen=True, slots=True)
class DeviceTrace:
    """A device's last minutes, as `GET /v1/gpus/history` shows them."""

    index: int
    uuid: str
    node: str
    samples: list[DeviceSample]  # oldest first


@dataclass(frozen=True, slots=True)
class CalibrationRow:
    key: ProfileKey
    estimate: MemoryEstimate
    sample_count: int
    mean_working_bytes: float | None
    max_working_bytes: int | None
    mean_error_ratio: float | None  # mean of estimate / measured over the samples that have both


class Backend(Protocol):
    settings: Settings
    store: TaskStore
    metrics: Metrics

    @property
    def default_engine(self) -> str: ...

    def submit(self, new: NewTask) -> tuple[Task, bool]:
        """Store and queue a task (raises QueueFull); True if new, False for a repeated
        idempotency key. Wakes the scheduler."""
        ...

    def cancel(self, task_id: str) -> Task | None: ...

    def devices(self, *, fresh: bool = False) -> list[DeviceView]: ...

    def device_history(self, seconds: float) -> list[DeviceTrace]:
        """The last `seconds` of this node's devices (other nodes keep their own)."""
        ...

    def calibration(self) -> list[CalibrationRow]: ...

    def estimate(self, key: ProfileKey, audio_seconds: float) -> MemoryEstimate: ...

    def healthy(self) -> bool: ...
