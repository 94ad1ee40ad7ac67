import json
import math
from pathlib import Path

import pytest

from gpuscribe.memory.profiles import (
    REFERENCE_CONTEXT_BYTES,
    GpuProfile,
    ModelProfile,
    ProfileBook,
    convert_measurements,
    reference_weights_bytes,
    reference_working_bytes,
    shipped_profiles,
)
from gpuscribe.memory.types import GIB, EstimateSource, ProfileKey

MEASUREMENTS = Path("/work/shared/measurements/h200-whisper-transformers-fp16.json")
SHIPPED = Path(__file__).parents[2] / "src/gpuscribe/memory/profiles/h200-transformers-float16.json"


def gib(x: int) -> float:
    return x / GIB


def key(gpu: str = "NVIDIA H200", model: str = "large-v3", **kw: object) -> ProfileKey:
    fields: dict[str, object] = {
        "gpu_name": gpu,
        "engine": "transformers",
        "model": model,
        "compute_type": "float16",
        "batch_size": 1,
        "beam_size": 1,
    }
    fields.update(kw)
    return ProfileKey(**fields)  # type: ignore[arg-type]


@pytest.mark.skipif(not MEASUREMENTS.exists(), reason="measurement file not at hand")
def test_shipped_json_is_the_conversion_of_the_measurements() -> None:
    converted = convert_measurements(json.loads(MEASUREMENTS.read_text()))
    assert json.loads(SHIPPED.read_text()) == converted


def test_numbers_match_the_measurement_table() -> None:
    # README table: large-v3 weights 2.876 GiB, peak reserved 3.459 / 4.361 / 8.176 GiB.
    assert gib(reference_weights_bytes("large-v3")) == pytest.approx(2.876, abs=1e-6)
    assert gib(reference_working_bytes("large-v3", 1, 1)) == pytest.approx(3.459 - 2.876, abs=1e-6)
    assert gib(reference_working_bytes("large-v3", 4, 1)) == pytest.approx(4.361 - 2.876, abs=1e-6)
    assert gib(reference_working_bytes("large-v3", 16, 1)) == pytest.approx(8.176 - 2.876, abs=1e-6)
    assert gib(reference_working_bytes("tiny", 1, 1)) == pytest.approx(0.129 - 0.071, abs=1e-6)
    assert gib(REFERENCE_CONTEXT_BYTES) == pytest.approx(1.2069091796875)


def test_beam_search_is_an_effective_batch() -> None:
    # batch 1 x 5 beams = batch 5: between the batch-4 and batch-16 points.
    w4 = reference_working_bytes("medium", 4, 1)
    w16 = reference_working_bytes("medium", 16, 1)
    assert reference_working_bytes("medium", 1, 5) == pytest.approx(w4 + (w16 - w4) / 12, abs=1)
    assert reference_working_bytes("medium", 5, 1) == reference_working_bytes("medium", 1, 5)


def test_beyond_the_largest_batch_extrapolates_linearly() -> None:
    w4 = reference_working_bytes("small", 4, 1)
    w16 = reference_working_bytes("small", 16, 1)
    assert reference_working_bytes("small", 28, 1) == pytest.approx(w16 + (w16 - w4), abs=1)


def test_unmeasured_models_derive_from_the_same_shape() -> None:
    assert reference_working_bytes("large-v2", 4, 5) == reference_working_bytes("large-v3", 4, 5)
    assert reference_working_bytes("tiny.en", 2, 1) == reference_working_bytes("tiny", 2, 1)
    assert reference_weights_bytes("large-v2") == pytest.approx(
        reference_weights_bytes("large-v3"), rel=0.01
    )
    assert reference_weights_bytes("turbo") == reference_weights_bytes("large-v3-turbo")


def test_unknown_model_has_no_reference() -> None:
    with pytest.raises(ValueError, match="no measured"):
        reference_working_bytes("mystery", 1, 1)


@pytest.mark.parametrize("gpu", ["NVIDIA H200", "NVIDIA H200 NVL", "nvidia h200"])
@pytest.mark.parametrize("compute_type", ["float16", "default"])
def test_lookup_matches_h200_transformers(gpu: str, compute_type: str) -> None:
    found = ProfileBook().lookup(key(gpu, compute_type=compute_type, batch_size=4))
    assert found is not None
    assert found.source is EstimateSource.PROFILE
    assert found.working_bytes == with_margin(reference_working_bytes("large-v3", 4, 1))
    assert found.weights_bytes == with_margin(reference_weights_bytes("large-v3"))
    assert found.context_bytes == REFERENCE_CONTEXT_BYTES


@pytest.mark.parametrize(
    "k",
    [
        key("NVIDIA A100-SXM4-80GB"),
        key(engine="faster-whisper"),
        key(compute_type="int8_float16"),
        key(model="mystery"),
    ],
)
def test_lookup_misses(k: ProfileKey) -> None:
    assert ProfileBook().lookup(k) is None


def test_book_of_given_profiles() -> None:
    profile = GpuProfile(
        "A100",
        "transformers",
        frozenset({"float16"}),
        7,
        {"tiny": ModelProfile(weights_bytes=10, batch_points=((1, 100), (3, 300)))},
    )
    book = ProfileBook([profile])
    found = book.lookup(key("NVIDIA A100", "tiny", batch_size=2))
    assert found is not None
    assert (found.context_bytes, found.weights_bytes, found.working_bytes) == (
        7,
        with_margin(10),
        with_margin(200),
    )
    assert book.lookup(key("NVIDIA H200", "tiny")) is None


def measured_as_batch(profile: GpuProfile) -> bool:
    return any(m.batch_workspace is not None for m in profile.models.values())


def test_shipped_profiles_hold_every_known_model() -> None:
    profiles = {p.gpu_name_contains: p for p in shipped_profiles() if not measured_as_batch(p)}
    assert set(profiles) == {"H100", "H200"}
    for profile in profiles.values():
        assert {"tiny", "tiny.en", "large-v1", "large-v2", "medium.en"} <= set(profile.models)
        assert profile.models["large-v2"].derived_from == "large-v3"
    assert profiles["H100"].models["large-v3"].beam_points  # calibrate measured beam curves


def test_conversion_skips_beam_rows_and_failures() -> None:
    data = {
        "ctx_used_gb": 1.0,
        "rows": [
            {"model": "tiny", "batch": 1, "weights_gb": 0.5, "peak_reserved_gb": 1.5, "ok": True},
            {
                "model": "tiny",
                "batch": 1,
                "beams": 5,
                "weights_gb": 0.5,
                "peak_reserved_gb": 9,
                "ok": True,
            },
            {"model": "tiny", "batch": 4, "weights_gb": 0.5, "peak_reserved_gb": 9, "ok": False},
        ],
    }
    out = convert_measurements(data)
    assert out["context_bytes"] == GIB
    assert out["models"]["tiny"] == {
        "weights_bytes": GIB // 2,
        "points": [{"batch_size": 1, "working_bytes": GIB}],
    }


def with_margin(measured: int) -> int:
    """What a profile estimate adds to one measurement (see profiles.PROFILE_MARGIN)."""
    from gpuscribe.memory.profiles import PROFILE_MARGIN

    return math.ceil(measured * PROFILE_MARGIN)


@pytest.mark.parametrize("gpu", ["NVIDIA H100 80GB HBM3"])  # the H200's is not measured yet
def test_shipped_batch_profiles_cover_the_grid_and_its_shapes(gpu: str) -> None:
    """Each GPU model's profile of the batched engine: a fit for every model of the grid, the
    same fit for the models of the same shapes, and no task curve of its own (the per-task
    profile of that GPU keeps giving those)."""
    book = ProfileBook()
    grid = ("tiny", "base", "small", "medium", "large-v3", "large-v3-turbo")
    for model in (*grid, "tiny.en", "medium.en", "large-v2"):
        found = book.batch(key(gpu, model))
        assert found is not None, model
        assert found.weights_bytes > 0 and found.workspace.fixed_bytes > 0
    assert book.batch(key(gpu, "large-v2")) is not None
    v2, v3 = book.batch(key(gpu, "large-v2")), book.batch(key(gpu, "large-v3"))
    assert v2 is not None and v3 is not None and v2.workspace == v3.workspace
    assert book.lookup(key(gpu, "large-v3")) is not None  # the per-task profile's
