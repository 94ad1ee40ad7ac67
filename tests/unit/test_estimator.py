import math

import pytest

from gpuscribe.domain import TranscriptionOptions
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.estimator import Estimator, profile_key_for
from gpuscribe.memory.prior import CPU_RUNTIME_BYTES, prior_estimate
from gpuscribe.memory.profiles import (
    REFERENCE_CONTEXT_BYTES,
    ProfileBook,
    reference_weights_bytes,
    reference_working_bytes,
)
from gpuscribe.memory.types import CalibrationSample, EstimateSource, ProfileKey
from gpuscribe.telemetry.base import DeviceKind

H200 = ProfileKey("NVIDIA H200", "transformers", "large-v3", "float16", 1, 1)
A100 = ProfileKey("NVIDIA A100", "transformers", "large-v3", "float16", 1, 1)
CUDA_CONTEXT = 999


def estimator(book: CalibrationBook | None = None) -> Estimator:
    return Estimator(
        book or CalibrationBook(10, 1.2),
        ProfileBook(),
        confidence_factor=1.2,
        cuda_context_bytes=CUDA_CONTEXT,
    )


def test_profile_when_no_samples() -> None:
    est = estimator().estimate(H200, 30, device_kind=DeviceKind.CUDA)
    assert est.source is EstimateSource.PROFILE
    assert est.working_bytes == with_margin(reference_working_bytes("large-v3", 1, 1))
    assert est.weights_bytes == with_margin(reference_weights_bytes("large-v3"))
    assert est.context_bytes == REFERENCE_CONTEXT_BYTES


def test_prior_when_no_profile() -> None:
    est = estimator().estimate(A100, 400, device_kind=DeviceKind.CUDA)
    expected = prior_estimate(
        A100, 400, confidence_factor=1.2, context_bytes=CUDA_CONTEXT, cuda=True
    )
    assert est == expected


def test_calibrated_wins_over_profile_and_prior() -> None:
    book = CalibrationBook(10, 0.0)
    e = estimator(book)
    for key in (H200, A100):
        book.add(CalibrationSample(key, 12345, None, None, 0.0))
        est = e.estimate(key, 30, device_kind=DeviceKind.CUDA)
        assert est.source is EstimateSource.CALIBRATED
        assert (est.working_bytes, est.sample_count) == (12345, 1)


def test_weights_and_context_from_the_most_specific_source() -> None:
    book = CalibrationBook(10, 0.0)
    e = estimator(book)
    book.add(CalibrationSample(A100, 1, 777, 55, 0.0))
    est = e.estimate(A100, 30, device_kind=DeviceKind.CUDA)
    assert (est.weights_bytes, est.context_bytes) == (777, 55)
    # Measured weights on another GPU model do not count for this one.
    est = e.estimate(H200, 30, device_kind=DeviceKind.CUDA)
    assert est.weights_bytes == with_margin(reference_weights_bytes("large-v3"))
    assert est.context_bytes == REFERENCE_CONTEXT_BYTES


CPU = ProfileKey("CPU (AMD EPYC)", "faster-whisper", "tiny.en", "default", 1, 5)


def test_the_cpu_workers_own_memory_is_its_context() -> None:
    est = estimator().estimate(CPU, 30, device_kind=DeviceKind.CPU)
    assert est.context_bytes == CPU_RUNTIME_BYTES  # not a CUDA context, but never nothing
    assert est.source is EstimateSource.PRIOR
    assert est.weights_bytes > 0


def test_cpu_estimate_covers_the_measured_peaks() -> None:
    """Peaks of 0.44-0.65 GiB (the worker's whole resident memory) with tiny.en: samples carry
    the worker's memory beyond the weights as context; the estimate is never below a peak."""
    book = CalibrationBook(50, 1.2)
    e = estimator(book)
    weights = e.estimate(CPU, 30, device_kind=DeviceKind.CPU).weights_bytes
    peaks = [int(gib * 1024**3) for gib in (0.44, 0.47, 0.52, 0.65, 0.49)]
    for peak in peaks:
        baseline = 300 * 1024**2
        book.add(CalibrationSample(CPU, peak - baseline, None, baseline - weights, 0.0))
    est = e.estimate(CPU, 30, device_kind=DeviceKind.CPU)
    assert est.source is EstimateSource.CALIBRATED
    assert est.total_bytes >= max(peaks)


def test_min_working_bytes_raises_the_estimate() -> None:
    e = estimator()
    plain = e.estimate(H200, 30, device_kind=DeviceKind.CUDA)
    raised = e.estimate(
        H200, 30, device_kind=DeviceKind.CUDA, min_working_bytes=plain.working_bytes * 2
    )
    assert raised.working_bytes == plain.working_bytes * 2
    low = e.estimate(H200, 30, device_kind=DeviceKind.CUDA, min_working_bytes=1)
    assert low.working_bytes == plain.working_bytes


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("turbo", "large-v3-turbo"), ("LARGE", "large-v3"), ("my-model", "my-model")],
)
def test_profile_key_for_resolves_aliases(given: str, canonical: str) -> None:
    options = TranscriptionOptions(model=given, engine="transformers", beam_size=2, batch_size=3)
    key = profile_key_for(options, "NVIDIA H200")
    assert key == ProfileKey("NVIDIA H200", "transformers", canonical, "default", 3, 2)


def with_margin(measured: int) -> int:
    """What a profile estimate adds to one measurement (see profiles.PROFILE_MARGIN)."""
    from gpuscribe.memory.profiles import PROFILE_MARGIN

    return math.ceil(measured * PROFILE_MARGIN)
