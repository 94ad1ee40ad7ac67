"""The estimator: what a task's worker process will hold on a device at its peak.

Each part comes from the most specific source that knows it: samples measured here
(calibrated), then a profile shipped for this GPU model, then the design's prior table.
"""

from __future__ import annotations

from gpuscribe.domain import TranscriptionOptions
from gpuscribe.memory.architectures import canonical_model_name
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.prior import CPU_RUNTIME_BYTES, prior_estimate
from gpuscribe.memory.profiles import ProfileBook
from gpuscribe.memory.types import EstimateSource, MemoryEstimate, ProfileKey
from gpuscribe.telemetry.base import DeviceKind


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
    ) -> None:
        self.book = book
        self.profiles = profiles
        self.confidence_factor = confidence_factor
        self.cuda_context_bytes = cuda_context_bytes

    def estimate(
        self,
        key: ProfileKey,
        audio_seconds: float,
        *,
        device_kind: DeviceKind,
        min_working_bytes: int = 0,
    ) -> MemoryEstimate:
        """`min_working_bytes` raises the working figure (a retry after an out-of-memory)."""
        fallback = self.profiles.lookup(key) or prior_estimate(
            key,
            audio_seconds,
            confidence_factor=self.confidence_factor,
            context_bytes=self.cuda_context_bytes,
            cuda=device_kind is not DeviceKind.CPU,
        )
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
