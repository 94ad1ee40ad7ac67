"""`GET /v1/calibration`: per key, what is estimated now against what was measured."""

from __future__ import annotations

from collections.abc import Iterable

from gpuscribe.api.backend import CalibrationRow
from gpuscribe.audio import WINDOW_SECONDS
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.estimator import Estimator
from gpuscribe.node.devices import DeviceSlot
from gpuscribe.telemetry.base import DeviceKind


def calibration_rows(
    book: CalibrationBook, estimator: Estimator, slots: Iterable[DeviceSlot]
) -> list[CalibrationRow]:
    """Each key's estimate for one 30 s window (memory does not grow with audio length beyond
    it) beside what its window of samples measured."""
    kinds = {slot.device.name: slot.kind for slot in slots}
    totals = {slot.device.name: slot.ledger.total_bytes for slot in slots}
    rows = []
    for stats in book.rows():
        kind = kinds.get(stats.key.gpu_name, DeviceKind.CUDA)
        estimate = estimator.estimate(
            stats.key, WINDOW_SECONDS, device_kind=kind, total_bytes=totals.get(stats.key.gpu_name)
        )
        rows.append(
            CalibrationRow(
                key=stats.key,
                estimate=estimate,
                sample_count=stats.sample_count,
                mean_working_bytes=stats.mean_working_bytes,
                max_working_bytes=stats.max_working_bytes,
                mean_error_ratio=stats.mean_error_ratio,
            )
        )
    return sorted(
        rows, key=lambda r: (r.key.gpu_name, r.key.model, r.key.batch_size, r.key.beam_size)
    )
