"""The user's design table: the prior estimate, used before anything has been measured
(docs/DESIGN.md, Estimate, measure, calibrate).

The table's figures (GiB per task, weights included) are known to be 3x to 10x what a task
really holds (see the shipped profiles); they are only the last resort of the estimator.
The total is split into the model's weights (from the published parameter count) and working
memory (the rest), because the ledger pays weights once per device and working per task.
"""

from __future__ import annotations

from gpuscribe.memory.architectures import canonical_model_name, weights_bytes
from gpuscribe.memory.types import GIB, MIB, EstimateSource, MemoryEstimate, ProfileKey

# GiB per task, by canonical model name. `.en` variants use their multilingual base.
PRIOR_TABLE_GIB: dict[str, float] = {
    "tiny": 1.0,
    "base": 1.0,
    "small": 2.0,
    "medium": 5.0,
    "large-v1": 10.0,
    "large-v2": 10.0,
    "large-v3": 10.0,
    "large-v3-turbo": 4.5,
}
UNKNOWN_MODEL_GIB = 5.0
MODEL_VERSION_FACTOR = 1.0
MIN_WORKING_BYTES = 64 * MIB
DURATION_KNEE_SECONDS = 180.0
DURATION_SLOPE = 0.3
# A CPU worker's resident memory beyond the model's weights before a task (Python, NumPy, PyAV,
# CTranslate2 and faster-whisper loaded): 0.17 GiB measured in a worker with tiny.en. Used until
# this machine has measured its own (CPU calibration samples carry it); the prior errs high.
CPU_RUNTIME_BYTES = 320 * MIB
# What a loaded model holds beyond its parameters' bytes (the allocator rounds each tensor up to
# its blocks): up to 3.7 % measured (small in fp16 on an H200: 501.4 MB for 483.5 MB of
# parameters). The prior charges the parameters plus this margin, so that the measurement that
# replaces it after the first load can only lower the ledger, never lift it over the cap.
WEIGHTS_MARGIN = 0.05


def prior_weights_bytes(model: str, compute_type: str, *, cuda: bool) -> int:
    """The weights a model is charged before its load was measured (0: an unknown model)."""
    parameters = weights_bytes(model, compute_type, cuda=cuda) or 0
    return int(parameters * (1.0 + WEIGHTS_MARGIN))


def table_gib(model: str) -> float:
    """The design's per-task figure for a model name (aliases and `.en` resolved)."""
    canonical = canonical_model_name(model)
    if canonical is None:
        return UNKNOWN_MODEL_GIB
    return PRIOR_TABLE_GIB.get(canonical.removesuffix(".en"), UNKNOWN_MODEL_GIB)


def duration_factor(audio_seconds: float) -> float:
    """1.0 up to 180 s of audio, then `1 + (d/180 - 1) * 0.3`."""
    if audio_seconds <= DURATION_KNEE_SECONDS:
        return 1.0
    return 1.0 + (audio_seconds / DURATION_KNEE_SECONDS - 1.0) * DURATION_SLOPE


def prior_estimate(
    key: ProfileKey,
    audio_seconds: float,
    *,
    confidence_factor: float,
    context_bytes: int,
    cuda: bool,
) -> MemoryEstimate:
    """The design's estimate for one task. An unknown model's weights are not known: its whole
    figure is charged as working memory (per task), the conservative side."""
    factor = duration_factor(audio_seconds) * MODEL_VERSION_FACTOR * confidence_factor
    total = int(table_gib(key.model) * GIB * factor)
    weights = prior_weights_bytes(key.model, key.compute_type, cuda=cuda)
    working = max(total - weights, MIN_WORKING_BYTES)
    return MemoryEstimate(
        context_bytes=context_bytes,
        weights_bytes=weights,
        working_bytes=working,
        source=EstimateSource.PRIOR,
    )
