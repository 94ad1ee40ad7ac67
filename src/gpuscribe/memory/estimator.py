"""The estimator: what a task's worker process will hold on a device at its peak.

Each part comes from the most specific source that knows it: samples measured here
(calibrated), then a profile shipped for this GPU model, then the design's prior table
(docs/DESIGN.md, Estimate, measure, calibrate).

The transformers engine on a GPU runs each model as one continuous batch (`memory/batch.py`):
what a task there needs is the model's resident batch (its cache rows and workspace, charged
once per resident model with the weights) and a small working figure of its own. The batch's
rows follow from the device's total memory (`choose_rows`), its workspace from the fit of peaks
of batches of several sizes measured by `gpuscribe calibrate` on this deployment, else from the
fit shipped in a profile for this GPU model, else from the formula. The
per-task samples of that engine (tasks that ran alone) are not used for it: with a batch, a
task's peak above the loaded model measures the batch's workspace (already charged), not the
task. The profiles' per-task working figures are not used for it either.
"""

from __future__ import annotations

from gpuscribe.domain import TranscriptionOptions
from gpuscribe.memory.architectures import canonical_model_name
from gpuscribe.memory.batch import (
    MAX_ROWS,
    BatchShape,
    choose_rows,
    plan_batch,
    shape_of,
    task_working_bytes,
)
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.prior import CPU_RUNTIME_BYTES, prior_estimate
from gpuscribe.memory.profiles import ProfileBook
from gpuscribe.memory.types import EstimateSource, MemoryEstimate, ProfileKey
from gpuscribe.telemetry.base import DeviceKind

BATCHED_ENGINE = "transformers"  # the engine that runs a continuous batch per model on a GPU


def profile_key_for(options: TranscriptionOptions, gpu_name: str) -> ProfileKey:
    """The key of a task's options on a GPU model. Model aliases are resolved (`turbo` and
    `large-v3-turbo` share their samples); unknown names are kept as given."""
    model = canonical_model_name(options.model) or options.model
    return ProfileKey(
        gpu_name=gpu_name,
        engine=options.engine,
        model=model,
        compute_type=options.compute_type,
        batch_size=options.batch_size,
        beam_size=options.beam_size,
    )


class Estimator:
    def __init__(
        self,
        book: CalibrationBook,
        profiles: ProfileBook,
        *,
        confidence_factor: float,
        cuda_context_bytes: int,
        cap_fraction: float = 0.9,
        batch_rows: int = 0,
        pooled: bool = False,
    ) -> None:
        """`cap_fraction` (MAX_MEMORY_UTILIZATION) and `batch_rows` (GPUSCRIBE_BATCH_ROWS, 0:
        auto) decide the rows of a batched model's batch on a device; `pooled`
        (GPUSCRIBE_BATCH_LAYOUT auto or pooled) charges a pooled cache's larger steps."""
        self.book = book
        self.profiles = profiles
        self.confidence_factor = confidence_factor
        self.cuda_context_bytes = cuda_context_bytes
        self.cap_fraction = cap_fraction
        self.batch_rows = batch_rows
        self.pooled = pooled

    def estimate(
        self,
        key: ProfileKey,
        audio_seconds: float,
        *,
        device_kind: DeviceKind,
        min_working_bytes: int = 0,
        total_bytes: int | None = None,
        word_timestamps: bool = True,
    ) -> MemoryEstimate:
        """`min_working_bytes` raises the working figure (a retry after an out-of-memory).
        `total_bytes` is the device's memory, from which a batched model's rows are chosen
        (unknown: GPUSCRIBE_BATCH_ROWS, else the most rows, 256). `word_timestamps` (unknown:
        True, the larger) decides whether a task on a batch keeps its windows' encoder
        output."""
        fallback = self.profiles.lookup(key) or prior_estimate(
            key,
            audio_seconds,
            confidence_factor=self.confidence_factor,
            context_bytes=self.cuda_context_bytes,
            cuda=device_kind is not DeviceKind.CPU,
        )
        shape = shape_of(key.model, key.compute_type) if self.batched(key, device_kind) else None
        if shape is not None:
            own = task_working_bytes(
                shape, key.batch_size, audio_seconds, word_timestamps=word_timestamps
            )
            working = max(own, min_working_bytes)
            return self._batched(key, shape, fallback, device_kind, working, total_bytes)
        working, source, count = fallback.working_bytes, fallback.source, 0
        calibrated = self.book.working(key)
        if calibrated is not None:
            working, count = calibrated
            source = EstimateSource.CALIBRATED
        return MemoryEstimate(
            context_bytes=self._context(key, fallback, device_kind),
            weights_bytes=self._weights(key, fallback),
            working_bytes=max(working, min_working_bytes),
            source=source,
            sample_count=count,
        )

    @staticmethod
    def batched(key: ProfileKey, device_kind: DeviceKind) -> bool:
        """Whether tasks of this key run on a continuous batch (the transformers engine on a
        real GPU; simulated GPUs and the CPU keep the per-task model)."""
        return key.engine == BATCHED_ENGINE and device_kind is DeviceKind.CUDA

    def _batched(
        self,
        key: ProfileKey,
        shape: BatchShape,
        fallback: MemoryEstimate,
        device_kind: DeviceKind,
        working_bytes: int,
        total_bytes: int | None,
    ) -> MemoryEstimate:
        profiled = self.profiles.batch(key)
        if profiled is not None:
            fallback = MemoryEstimate(
                profiled.context_bytes, profiled.weights_bytes, 0, EstimateSource.PROFILE
            )
        context = self._context(key, fallback, device_kind)
        weights = self._weights(key, fallback)
        fitted = self.book.batch_workspace(key.gpu_name, key.model_key)
        workspace, count = fitted if fitted is not None else (None, 0)
        source = EstimateSource.CALIBRATED if workspace is not None else fallback.source
        if workspace is None and profiled is not None:
            workspace = profiled.workspace
        workspace = shape.workspace_for(workspace, pooled=self.pooled)
        if total_bytes is None:
            rows = self.batch_rows or MAX_ROWS
        else:
            rows = choose_rows(
                total_bytes=total_bytes,
                cap_fraction=self.cap_fraction,
                context_bytes=context,
                weights_bytes=weights,
                shape=shape,
                workspace=workspace,
                batch_rows=self.batch_rows,
            )
        plan = plan_batch(rows, shape, workspace)
        return MemoryEstimate(
            context_bytes=context,
            weights_bytes=weights,
            working_bytes=working_bytes,
            source=source,
            sample_count=count,
            batch_bytes=plan.batch_bytes,
            batch_rows=rows,
        )

    def _weights(self, key: ProfileKey, fallback: MemoryEstimate) -> int:
        measured = self.book.weights(key.gpu_name, key.model_key)
        return fallback.weights_bytes if measured is None else measured[0]

    def _context(self, key: ProfileKey, fallback: MemoryEstimate, kind: DeviceKind) -> int:
        """A CUDA context on GPUs; on the CPU the worker's own resident memory beyond the
        weights (interpreter, engine libraries), which its peak includes too."""
        measured = self.book.context(key.gpu_name, key.model_key)
        if measured is not None:
            return measured[0]
        return CPU_RUNTIME_BYTES if kind is DeviceKind.CPU else fallback.context_bytes
