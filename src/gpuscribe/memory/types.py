"""Value types of memory estimation, shared by the estimator, the ledger, the store and the API."""

from __future__ import annotations

import enum
from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2


def gib_text(n: int, digits: int = 1) -> str:
    """Bytes as people read them in messages: `9.3 GiB`."""
    return f"{n / GIB:.{digits}f} GiB"


class EstimateSource(enum.StrEnum):
    PRIOR = "prior"  # the user's design table and factors
    PROFILE = "profile"  # a measured profile shipped in the package for this GPU model
    CALIBRATED = "calibrated"  # samples measured on this deployment


@dataclass(frozen=True, slots=True)
class ModelKey:
    """A model as loaded in one worker: its weights are paid once per device."""

    engine: str
    model: str
    compute_type: str


@dataclass(frozen=True, slots=True)
class ProfileKey:
    """What a task's memory depends on. Keyed by GPU *name* (model of card), never its index."""

    gpu_name: str
    engine: str
    model: str
    compute_type: str
    batch_size: int
    beam_size: int

    @property
    def model_key(self) -> ModelKey:
        return ModelKey(self.engine, self.model, self.compute_type)


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """What the worker process will hold on the device at its peak for one task.

    `context_bytes` is paid once per worker process (the CUDA context), `weights_bytes` and
    `batch_bytes` once per model loaded on the device, `working_bytes` by every task.
    `batch_bytes` is the continuous batch a batched model owns on a GPU (its static cache of
    `batch_rows` rows and its workspace, `memory/batch.py`); 0 for engines without one.
    """

    context_bytes: int
    weights_bytes: int
    working_bytes: int
    source: EstimateSource
    sample_count: int = 0
    batch_bytes: int = 0
    batch_rows: int = 0  # 0: the engine's own default (no batch, or the CPU)

    @property
    def resident_bytes(self) -> int:
        """What the model holds once loaded, whatever the number of its tasks."""
        return self.weights_bytes + self.batch_bytes

    @property
    def total_bytes(self) -> int:
        return self.context_bytes + self.weights_bytes + self.batch_bytes + self.working_bytes


@dataclass(frozen=True, slots=True)
class CalibrationSample:
    """One measurement of one task: the working memory above weights and context at its peak,
    and, where measured, the weights and the context."""

    key: ProfileKey
    working_bytes: int
    weights_bytes: int | None
    context_bytes: int | None
    measured_at: float
    estimate_bytes: int | None = None  # what was estimated for it, to report estimation error
