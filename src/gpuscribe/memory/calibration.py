"""Calibration: windows of the newest measured samples, and the estimate drawn from them.

The estimate of a window is `mean + pstdev x confidence_factor`, never below the largest sample
(a single sample, or a tight window, must not estimate below what was already seen). Working
memory is windowed per ProfileKey; weights and the CUDA context per (GPU name, model), from the
samples that carry them.

Occupancy samples of a batched model (`gpuscribe calibrate` on the transformers engine: the
workspace at its peak of a batch with every row decoding, `memory/batch.py`) are stored as
samples whose `beam_size` is `OCCUPANCY_BEAM` (0, never a task's) and whose `batch_size` is the
batch's rows; they are kept per size and fitted as `fixed + per_row x rows`.

One non-reentrant lock guards every window. No method that holds it calls another public
method (the design's sketch deadlocked that way: docs/DESIGN.md, What we changed and why): the
helpers below take plain data.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gpuscribe.memory.architectures import canonical_model_name
from gpuscribe.memory.batch import OccupancySample, Workspace, fit_workspace
from gpuscribe.memory.types import CalibrationSample, ModelKey, ProfileKey

ModelSlot = tuple[str, ModelKey]  # (GPU name, model)
OCCUPANCY_BEAM = 0  # the beam size that marks a batch occupancy sample


def occupancy_sample(
    gpu_name: str,
    model: ModelKey,
    *,
    rows_in_use: int,
    workspace_bytes: int,
    weights_bytes: int | None,
    context_bytes: int | None,
    measured_at: float,
) -> CalibrationSample:
    """A batch's workspace measured with `rows_in_use` rows decoding, as a stored sample."""
    key = ProfileKey(
        gpu_name, model.engine, model.model, model.compute_type, rows_in_use, OCCUPANCY_BEAM
    )
    return CalibrationSample(key, workspace_bytes, weights_bytes, context_bytes, measured_at)


def _slot(gpu_name: str, model: ModelKey) -> ModelSlot:
    """Models by canonical name (`turbo` and `large-v3-turbo` share their samples)."""
    name = canonical_model_name(model.model) or model.model
    return gpu_name, ModelKey(model.engine, name, model.compute_type)


def window_estimate(values: Sequence[int], confidence_factor: float) -> int:
    """`max(mean + pstdev x k, max)`, rounded up to whole bytes."""
    mean = statistics.fmean(values)
    spread = statistics.pstdev(values, mean) if len(values) > 1 else 0.0
    return max(math.ceil(mean + spread * confidence_factor), max(values))


@dataclass(frozen=True, slots=True)
class CalibrationStats:
    """One key's window, for `GET /v1/calibration`."""

    key: ProfileKey
    sample_count: int
    mean_working_bytes: float
    max_working_bytes: int
    working_estimate_bytes: int
    mean_error_ratio: float | None  # mean estimate_bytes / working_bytes where both are known


@dataclass(slots=True)
class _Window:
    working: deque[int]
    ratios: deque[float | None]


class CalibrationBook:
    def __init__(self, sample_size: int, confidence_factor: float) -> None:
        if sample_size < 1:
            raise ValueError(f"sample_size must be at least 1, not {sample_size}")
        self.sample_size = sample_size
        self.confidence_factor = confidence_factor
        self._lock = threading.Lock()
        self._working: dict[ProfileKey, _Window] = {}
        self._weights: dict[ModelSlot, deque[int]] = {}
        self._context: dict[ModelSlot, deque[int]] = {}
        self._occupancy: dict[ModelSlot, dict[int, deque[int]]] = {}

    def add(self, sample: CalibrationSample) -> None:
        with self._lock:
            self._add_locked(sample)

    def load(self, samples: Iterable[CalibrationSample]) -> None:
        """Add stored samples, oldest first (so the newest stay in each window)."""
        ordered = sorted(samples, key=lambda s: s.measured_at)
        with self._lock:
            for sample in ordered:
                self._add_locked(sample)

    def _add_locked(self, sample: CalibrationSample) -> None:
        size = self.sample_size
        if sample.key.beam_size == OCCUPANCY_BEAM:
            by_rows = self._occupancy.setdefault(
                _slot(sample.key.gpu_name, sample.key.model_key), {}
            )
            by_rows.setdefault(sample.key.batch_size, deque(maxlen=size)).append(
                sample.working_bytes
            )
            self._add_model_locked(sample)
            return
        window = self._working.get(sample.key)
        if window is None:
            window = self._working[sample.key] = _Window(deque(maxlen=size), deque(maxlen=size))
        window.working.append(sample.working_bytes)
        window.ratios.append(_ratio(sample))
        self._add_model_locked(sample)

    def _add_model_locked(self, sample: CalibrationSample) -> None:
        size = self.sample_size
        slot = (sample.key.gpu_name, sample.key.model_key)
        if sample.weights_bytes is not None:
            self._weights.setdefault(slot, deque(maxlen=size)).append(sample.weights_bytes)
        if sample.context_bytes is not None:
            self._context.setdefault(slot, deque(maxlen=size)).append(sample.context_bytes)

    def working(self, key: ProfileKey) -> tuple[int, int] | None:
        """(estimated working bytes, sample count), or None before any sample of the key."""
        with self._lock:
            window = self._working.get(key)
            values = list(window.working) if window is not None else []
        return self._summarise(values)

    def batch_workspace(self, gpu_name: str, model: ModelKey) -> tuple[Workspace, int] | None:
        """(the fit of a batched model's workspace, sample count) from its occupancy samples,
        or None before two occupancies were measured. `default` is float16 (a GPU's)."""
        types = [model.compute_type]
        if model.compute_type in ("default", "auto"):
            types.append("float16")
        with self._lock:
            for compute_type in types:
                slot = _slot(gpu_name, ModelKey(model.engine, model.model, compute_type))
                by_rows = self._occupancy.get(slot)
                if by_rows:
                    samples = [
                        OccupancySample(rows, value)
                        for rows, values in by_rows.items()
                        for value in values
                    ]
                    break
            else:
                return None
        fit = fit_workspace(samples)
        return None if fit is None else (fit, len(samples))

    def weights(self, gpu_name: str, model: ModelKey) -> tuple[int, int] | None:
        with self._lock:
            values = list(self._weights.get((gpu_name, model), ()))
        return self._summarise(values)

    def context(self, gpu_name: str, model: ModelKey) -> tuple[int, int] | None:
        with self._lock:
            values = list(self._context.get((gpu_name, model), ()))
        return self._summarise(values)

    def _summarise(self, values: list[int]) -> tuple[int, int] | None:
        if not values:
            return None
        return window_estimate(values, self.confidence_factor), len(values)

    def rows(self) -> list[CalibrationStats]:
        with self._lock:
            copies = [(k, list(w.working), list(w.ratios)) for k, w in self._working.items()]
        return [self._stats(key, values, ratios) for key, values, ratios in copies]

    def _stats(
        self, key: ProfileKey, values: list[int], ratios: list[float | None]
    ) -> CalibrationStats:
        known = [r for r in ratios if r is not None]
        return CalibrationStats(
            key=key,
            sample_count=len(values),
            mean_working_bytes=statistics.fmean(values),
            max_working_bytes=max(values),
            working_estimate_bytes=window_estimate(values, self.confidence_factor),
            mean_error_ratio=statistics.fmean(known) if known else None,
        )


def _ratio(sample: CalibrationSample) -> float | None:
    if sample.estimate_bytes is None or sample.working_bytes <= 0:
        return None
    return sample.estimate_bytes / sample.working_bytes
