"""Memory: estimates (prior, shipped profiles, calibration) and the per-device ledger."""

from gpuscribe.memory.types import (
    CalibrationSample,
    EstimateSource,
    MemoryEstimate,
    ModelKey,
    ProfileKey,
)

__all__ = ["CalibrationSample", "EstimateSource", "MemoryEstimate", "ModelKey", "ProfileKey"]
