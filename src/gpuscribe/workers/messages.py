"""Messages between a node (parent) and its worker on one device. Plain picklable data.

Parent -> worker: `RunTask`, `CancelTask`, `UnloadModel`, `Shutdown`.
Worker -> parent: `WorkerReady`, `ModelLoaded`, `ModelUnloaded`, `TaskStarted`, `TaskProgress`,
`TaskCompleted`, `TaskFailed`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gpuscribe.domain import Priority, Transcript, TranscriptionOptions
from gpuscribe.memory.types import ModelKey
from gpuscribe.telemetry.base import DeviceKind


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """Which device a worker drives. For CUDA the worker process is started with
    CUDA_VISIBLE_DEVICES=<uuid>, so inside it the device is always `cuda:0`."""

    kind: DeviceKind
    uuid: str
    index: int
    name: str


class FailureKind(enum.StrEnum):
    BAD_INPUT = "bad_input"  # never retried
    TRANSIENT = "transient"  # retried with backoff
    NODE_LOCAL = "node_local"  # this node cannot run it (audio, model): retried elsewhere at once
    OUT_OF_MEMORY = "out_of_memory"  # retried with a raised estimate
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"


# --- parent -> worker -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunTask:
    task_id: str
    lease_token: str
    audio_path: str
    audio_seconds: float
    options: TranscriptionOptions
    admitted_bytes: (
        int  # what the ledger admitted for this worker process in total, this task included
    )
    evict: tuple[ModelKey, ...] = ()  # idle models to unload before loading this task's model
    # Rows of the model's batch (transformers on a GPU: memory/batch.py), as the ledger charged
    # them; 0: the engine's default (the CPU, engines without a batch).
    batch_rows: int = 0
    priority: int = int(Priority.NORMAL)  # the task's; lower runs sooner (Priority.URGENT = 0)


@dataclass(frozen=True, slots=True)
class CancelTask:
    task_id: str


@dataclass(frozen=True, slots=True)
class UnloadModel:
    model: ModelKey


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


# --- worker -> parent -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkerReady:
    device_uuid: str
    pid: int
    context_bytes: int  # measured on the device once the worker initialised it (0 on the CPU)


@dataclass(frozen=True, slots=True)
class ModelLoaded:
    device_uuid: str
    model: ModelKey
    weights_bytes: int
    load_seconds: float


@dataclass(frozen=True, slots=True)
class ModelUnloaded:
    device_uuid: str
    model: ModelKey


@dataclass(frozen=True, slots=True)
class TaskStarted:
    task_id: str
    lease_token: str


@dataclass(frozen=True, slots=True)
class TaskProgress:
    task_id: str
    lease_token: str
    progress: float


@dataclass(frozen=True, slots=True)
class TaskCompleted:
    task_id: str
    lease_token: str
    transcript: Transcript  # pickled over the pipe as it is: no dict on the way
    peak_bytes: int | None  # the worker process's peak on the device during the task
    working_bytes: int | None  # peak above context and weights; a calibration sample
    ran_alone: bool  # no other task overlapped: the working figure is this task's alone
    seconds: float


@dataclass(frozen=True, slots=True)
class TaskFailed:
    task_id: str
    lease_token: str
    kind: FailureKind
    error: str
    peak_bytes: int | None = None


WorkerEvent = (
    WorkerReady
    | ModelLoaded
    | ModelUnloaded
    | TaskStarted
    | TaskProgress
    | TaskCompleted
    | TaskFailed
)
WorkerCommand = RunTask | CancelTask | UnloadModel | Shutdown
