"""Interfaces of workers and engines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from gpuscribe.domain import Segment, Transcript, TranscriptionOptions
from gpuscribe.memory.types import ModelKey
from gpuscribe.workers.messages import DeviceRef, RunTask, WorkerEvent

EventSink = Callable[[WorkerEvent], None]


class WorkerHandle(Protocol):
    """The parent's side of one device's worker. Events arrive through the sink given at
    construction, on a thread of the handle's own."""

    device: DeviceRef

    def start(self) -> None: ...

    def run(self, command: RunTask) -> None: ...

    def cancel(self, task_id: str) -> None: ...

    def unload(self, model: ModelKey) -> None:
        """Unload a model the worker holds idle (it reports ModelUnloaded); one in use goes once
        its last task ends."""
        ...

    def kill_task(self, task_id: str) -> None:
        """Stop a task that did not stop when cancelled (timeout): may restart the worker."""
        ...

    def alive(self) -> bool: ...

    def pids(self) -> set[int]:
        """Processes whose device memory is gpuscribe's own (NVML per-process attribution)."""
        ...

    def stop(self, timeout: float = 10.0) -> None: ...


class LoadedModel(Protocol):
    weights_bytes: int

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscriptionOptions,
        on_segment: Callable[[Segment, float], None],
        should_stop: Callable[[], bool],
    ) -> Transcript:
        """Transcribe 16 kHz mono float32 audio. Calls `on_segment(segment, progress)` as segments
        arrive and stops early (raising `TaskCancelled`) once `should_stop()` is true."""
        ...

    def unload(self) -> None: ...


class Engine(Protocol):
    name: str

    def load(self, model: str, device: DeviceRef, compute_type: str) -> LoadedModel: ...


class TaskCancelled(Exception):
    """Raised inside an engine when a task is stopped (cancel or timeout)."""
