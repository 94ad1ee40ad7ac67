"""What the HTTP layer needs from a running node: its writes (submit, cancel), its reads
(`TaskReads`), word of a task becoming final (`watch_final`) and its devices. The node
implements it; tests may use a node built on the in-memory store and simulated GPUs. Routes
never reach past it to a store."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from gpuscribe.api.reads import TaskReads
from gpuscribe.config import Settings
from gpuscribe.domain import NewTask, Task
from gpuscribe.memory.types import MemoryEstimate, ProfileKey
from gpuscribe.memory.warning import MemoryWarning
from gpuscribe.metrics import Metrics
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
    memory_warning: MemoryWarning | None = None  # an episode: no task is admitted onto it


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


class Backend(TaskReads, Protocol):
    settings: Settings
    metrics: Metrics

    @property
    def default_engine(self) -> str: ...

    def submit(self, new: NewTask) -> tuple[Task, bool]:
        """Store and queue a task (raises QueueFull); True if new, False for a repeated
        idempotency key. Wakes the scheduler."""
        ...

    def cancel(self, task_id: str) -> Task | None: ...

    def watch_final(self, task_id: str, notify: Callable[[], None]) -> AbstractContextManager[None]:
        """While the block runs, `notify` is called (on the thread that made the task final;
        it must return at once) when the task becomes final on this node: read it again then.
        It may be called when nothing changed, and is not called for a task that finishes on
        another node of a cluster, which only the store shows."""
        ...

    def devices(self, *, fresh: bool = False) -> list[DeviceView]: ...

    def device_history(self, seconds: float) -> list[DeviceTrace]:
        """The last `seconds` of this node's devices (other nodes keep their own)."""
        ...

    def calibration(self) -> list[CalibrationRow]: ...

    def estimate(self, key: ProfileKey, audio_seconds: float) -> MemoryEstimate: ...

    def healthy(self) -> bool: ...
