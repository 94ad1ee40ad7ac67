"""The memory estimator the settings ask for: one place builds it, so that the node's scheduler,
`gpuscribe estimate` and calibration's choice of rows charge a batch alike."""

from __future__ import annotations

from gpuscribe.config import Settings
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.estimator import Estimator
from gpuscribe.memory.profiles import REFERENCE_CONTEXT_BYTES, ProfileBook


def estimator_for(settings: Settings, book: CalibrationBook) -> Estimator:
    """An estimator over `book`, the shipped profiles and the settings' cap, rows and cache
    layout."""
    return Estimator(
        book,
        ProfileBook(),
        confidence_factor=settings.memory_confidence_factor,
        cuda_context_bytes=REFERENCE_CONTEXT_BYTES,
        cap_fraction=settings.max_memory_utilization,
        batch_rows=settings.batch_rows,
        pooled=settings.batch_layout != "per-row",
    )
