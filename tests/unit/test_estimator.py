import math
from dataclasses import replace

import pytest

from gpuscribe.domain import TranscriptionOptions
from gpuscribe.memory.batch import (
    MAX_ROWS,
    TASK_BASE_BYTES,
    OccupancySample,
    Workspace,
    fit_workspace,
    plan_batch,
    shape_of,
    task_working_bytes,
)
from gpuscribe.memory.calibration import CalibrationBook, occupancy_sample
from gpuscribe.memory.estimator import Estimator, profile_key_for
from gpuscribe.memory.prior import CPU_RUNTIME_BYTES, prior_estimate
from gpuscribe.memory.profiles import (
    PROFILE_FORMAT,
    REFERENCE_CONTEXT_BYTES,
    GpuProfile,
    ProfileBook,
    reference_weights_bytes,
    reference_working_bytes,
    shipped_profiles,
)
from gpuscribe.memory.types import MIB, CalibrationSample, EstimateSource, ModelKey, ProfileKey
from gpuscribe.telemetry.base import DeviceKind

H200 = ProfileKey("NVIDIA H200", "transformers", "large-v3", "float16", 1, 1)
A100 = ProfileKey("NVIDIA A100", "transformers", "large-v3", "float16", 1, 1)
CUDA_CONTEXT = 999


# The shipped profiles measured per task (tests of the formula and of the per-task model do not
# depend on which GPU models have a shipped batch profile; those are tested at the end).
PER_TASK_PROFILES = ProfileBook(
    p for p in shipped_profiles() if all(m.batch_workspace is None for m in p.models.values())
)


def estimator(book: CalibrationBook | None = None) -> Estimator:
    return Estimator(
        book or CalibrationBook(10, 1.2),
        PER_TASK_PROFILES,
        confidence_factor=1.2,
        cuda_context_bytes=CUDA_CONTEXT,
    )


# The per-task model (profiles, prior, per-key samples) is what simulated GPUs, the CPU and
# faster-whisper use; the transformers engine on a real GPU runs a batch (tests further down).
SIMULATED = DeviceKind.SIMULATED


def test_profile_when_no_samples() -> None:
    est = estimator().estimate(H200, 30, device_kind=SIMULATED)
    assert est.source is EstimateSource.PROFILE
    assert est.working_bytes == with_margin(reference_working_bytes("large-v3", 1, 1))
    assert est.weights_bytes == with_margin(reference_weights_bytes("large-v3"))
    assert est.context_bytes == REFERENCE_CONTEXT_BYTES


def test_prior_when_no_profile() -> None:
    est = estimator().estimate(A100, 400, device_kind=SIMULATED)
    expected = prior_estimate(
        A100, 400, confidence_factor=1.2, context_bytes=CUDA_CONTEXT, cuda=True
    )
    assert est == expected


def test_calibrated_wins_over_profile_and_prior() -> None:
    book = CalibrationBook(10, 0.0)
    e = estimator(book)
    for key in (H200, A100):
        book.add(CalibrationSample(key, 12345, None, None, 0.0))
        est = e.estimate(key, 30, device_kind=SIMULATED)
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


# --- the transformers engine on a GPU: one batch per resident model ---------------------------
H200_TOTAL = 143_771 * 1024**2
TURBO = ProfileKey("NVIDIA H200", "transformers", "large-v3-turbo", "default", 1, 5)


def test_a_batched_model_is_charged_its_batch_once_and_a_small_working_figure() -> None:
    est = estimator().estimate(H200, 30, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL)
    shape = shape_of("large-v3", "float16")
    assert shape is not None
    assert est.batch_rows == 256
    assert est.batch_bytes == plan_batch(256, shape).batch_bytes
    assert est.working_bytes == task_working_bytes(shape, 1, 30.0)
    assert est.weights_bytes == with_margin(reference_weights_bytes("large-v3"))
    assert est.context_bytes == REFERENCE_CONTEXT_BYTES
    assert est.source is EstimateSource.PROFILE  # context and weights: the H200 profile
    assert est.resident_bytes == est.weights_bytes + est.batch_bytes
    assert est.total_bytes == (
        est.context_bytes + est.weights_bytes + est.batch_bytes + est.working_bytes
    )
    assert est.total_bytes <= H200_TOTAL * 0.9


def test_the_rows_follow_the_devices_memory_and_the_setting() -> None:
    e = estimator()
    small = e.estimate(A100, 30, device_kind=DeviceKind.CUDA, total_bytes=24 * 1024**3)
    assert small.batch_rows == 32 and small.source is EstimateSource.PRIOR  # a tiny context here
    assert small.total_bytes <= 24 * 1024**3 * 0.9
    unknown = e.estimate(A100, 30, device_kind=DeviceKind.CUDA)
    assert unknown.batch_rows == MAX_ROWS
    turbo = e.estimate(TURBO, 30, device_kind=DeviceKind.CUDA, total_bytes=24 * 1024**3)
    assert turbo.batch_rows > small.batch_rows
    fixed = Estimator(
        CalibrationBook(10, 1.2),
        PER_TASK_PROFILES,
        confidence_factor=1.2,
        cuda_context_bytes=CUDA_CONTEXT,
        batch_rows=48,
    )
    for total in (None, 24 * 1024**3, H200_TOTAL):
        assert (
            fixed.estimate(H200, 30, device_kind=DeviceKind.CUDA, total_bytes=total).batch_rows
            == 48
        )


def test_a_pooled_cache_is_charged_its_larger_steps_token_choice() -> None:
    """The same rows' bytes of cache; each row's workspace grows by what the pooled step's
    extra rows take in the token choice (`pooled_extra_per_row`), so that fewer turbo rows fit
    a 24 GiB GPU."""
    per_row = estimator()
    pooled = Estimator(
        CalibrationBook(10, 1.2), PER_TASK_PROFILES, confidence_factor=1.2,
        cuda_context_bytes=CUDA_CONTEXT, pooled=True,
    )  # fmt: skip
    shape = shape_of("large-v3", "float16")
    assert shape is not None and 2 * MIB < shape.pooled_per_row_bytes < 3 * MIB
    a, b = (e.estimate(H200, 30, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL)
            for e in (per_row, pooled))  # fmt: skip
    assert a.batch_rows == b.batch_rows == 256
    assert b.batch_bytes - a.batch_bytes == 256 * shape.pooled_per_row_bytes
    small = 24 * 1024**3
    t1, t2 = (e.estimate(TURBO, 30, device_kind=DeviceKind.CUDA, total_bytes=small)
              for e in (per_row, pooled))  # fmt: skip
    assert t2.batch_rows < t1.batch_rows and t2.total_bytes <= small * 0.9


def test_a_task_without_word_timestamps_keeps_no_encoder_output() -> None:
    e = estimator()
    kept = e.estimate(H200, 3600, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL)
    none = e.estimate(
        H200, 3600, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL, word_timestamps=False
    )
    assert none.working_bytes == TASK_BASE_BYTES < kept.working_bytes
    assert none.batch_bytes == kept.batch_bytes  # the batch is the model's either way


def test_a_lower_cap_gives_a_smaller_batch() -> None:
    low = Estimator(
        CalibrationBook(10, 1.2),
        PER_TASK_PROFILES,
        confidence_factor=1.2,
        cuda_context_bytes=CUDA_CONTEXT,
        cap_fraction=0.5,
    )
    est = low.estimate(A100, 30, device_kind=DeviceKind.CUDA, total_bytes=80 * 1024**3)
    assert (
        est.batch_rows
        < estimator()
        .estimate(A100, 30, device_kind=DeviceKind.CUDA, total_bytes=80 * 1024**3)
        .batch_rows
    )
    assert est.total_bytes <= 80 * 1024**3 * 0.5


def test_per_task_samples_do_not_set_a_batched_tasks_working_figure() -> None:
    book = CalibrationBook(10, 0.0)
    book.add(CalibrationSample(H200, 5 * 1024**3, None, None, 0.0))  # a batch's workspace
    est = estimator(book).estimate(H200, 30, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL)
    shape = shape_of("large-v3", "float16")
    assert shape is not None
    assert est.working_bytes == task_working_bytes(shape, 1, 30.0)
    assert est.source is EstimateSource.PROFILE


def test_occupancy_samples_replace_the_workspace_formula() -> None:
    book = CalibrationBook(10, 1.2)
    model = ModelKey("transformers", "large-v3", "float16")
    for rows, workspace in ((16, 2_000_000_000), (64, 2_500_000_000), (128, 3_000_000_000)):
        book.add(
            occupancy_sample(
                "NVIDIA H200", model, rows_in_use=rows, workspace_bytes=workspace,
                weights_bytes=None, context_bytes=None, measured_at=0.0,
            )
        )  # fmt: skip
    key = ProfileKey("NVIDIA H200", "transformers", "large", "default", 1, 5)  # alias, default
    est = estimator(book).estimate(key, 30, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL)
    fit = fit_workspace(
        [
            OccupancySample(16, 2_000_000_000),
            OccupancySample(64, 2_500_000_000),
            OccupancySample(128, 3_000_000_000),
        ]
    )
    shape = shape_of("large-v3", "float16")
    assert fit is not None and shape is not None
    assert est.source is EstimateSource.CALIBRATED and est.sample_count == 3
    assert est.batch_bytes == est.batch_rows * shape.row_bytes + fit.at(est.batch_rows)
    # no per-task estimate of the old engine is involved
    assert book.working(key) is None


def test_other_engines_and_devices_have_no_batch() -> None:
    fw = ProfileKey("NVIDIA H200", "faster-whisper", "large-v3", "float16", 1, 5)
    e = estimator()
    for key, kind in ((fw, DeviceKind.CUDA), (H200, SIMULATED), (CPU, DeviceKind.CPU)):
        est = e.estimate(key, 30, device_kind=kind, total_bytes=H200_TOTAL)
        assert (est.batch_bytes, est.batch_rows) == (0, 0)


PROFILE_WITH_BATCH = {  # an H200 profile that measured large-v3 only as a batch
    "format": PROFILE_FORMAT, "gpu_name_contains": "H200", "engine": "transformers",
    "compute_types": ["default", "float16"], "context_bytes": 1_500_000_000,
    "models": {"large-v3": {
        "weights_bytes": 3_000_000_000, "points": [],
        "batch": {"rows": 256, "points": [],
                  "fit": {"fixed_bytes": 2_000_000_000, "per_row_bytes": 10_000_000}},
    }},
}  # fmt: skip


def test_a_profiles_batch_fit_replaces_the_formula_and_calibration_the_profile() -> None:
    profiles = ProfileBook([GpuProfile.from_json(PROFILE_WITH_BATCH)])
    book = CalibrationBook(10, 1.2)
    e = Estimator(book, profiles, confidence_factor=1.2, cuda_context_bytes=CUDA_CONTEXT)
    shape = shape_of("large-v3", "float16")
    assert shape is not None
    est = e.estimate(H200, 30, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL)
    margin = Workspace(with_margin(2_000_000_000), with_margin(10_000_000))
    assert est.source is EstimateSource.PROFILE
    assert (est.context_bytes, est.weights_bytes) == (1_500_000_000, with_margin(3_000_000_000))
    assert est.batch_bytes == est.batch_rows * shape.row_bytes + margin.at(est.batch_rows)
    large_v2 = replace(H200, model="large-v2")  # same shape: the fit carries over
    assert e.estimate(large_v2, 30, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL)\
        .batch_bytes == est.batch_bytes  # fmt: skip
    model = ModelKey("transformers", "large-v3", "float16")
    for rows in (64, 128):
        book.add(
            occupancy_sample(
                "NVIDIA H200", model, rows_in_use=rows, workspace_bytes=1_000_000_000 + rows,
                weights_bytes=None, context_bytes=None, measured_at=0.0,
            )
        )  # fmt: skip
    calibrated = e.estimate(H200, 30, device_kind=DeviceKind.CUDA, total_bytes=H200_TOTAL)
    assert calibrated.source is EstimateSource.CALIBRATED
    rows = calibrated.batch_rows
    assert calibrated.batch_bytes == rows * shape.row_bytes + 1_000_000_000 + rows
    formula = estimator().estimate(
        replace(H200, gpu_name="NVIDIA A100"), 30, device_kind=DeviceKind.CUDA,
        total_bytes=H200_TOTAL,
    )  # fmt: skip
    assert formula.batch_bytes == plan_batch(formula.batch_rows, shape).batch_bytes
