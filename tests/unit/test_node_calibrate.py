"""node.calibrate, its pure parts: splitting the grid over devices, rows to samples, rows to a
shipped profile."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from gpuscribe.config import Settings
from gpuscribe.memory.batch import Workspace
from gpuscribe.memory.calibration import OCCUPANCY_BEAM, CalibrationBook
from gpuscribe.memory.profiles import PROFILE_FORMAT, PROFILE_MARGIN, GpuProfile, ProfileBook
from gpuscribe.memory.types import MIB, EstimateSource, ModelKey, ProfileKey
from gpuscribe.node.calibrate import (
    _split_jobs,
    batch_rows_for,
    profile_from_rows,
    sample_from_row,
)
from gpuscribe.telemetry.base import DeviceKind, DeviceReading
from gpuscribe.telemetry.simulated import SimulatedGpus
from gpuscribe.workers.calibrate import CalibrationJob, CalibrationRow

GPU = "NVIDIA H100 80GB HBM3"


def row(
    model: str = "tiny.en",
    batch: int = 1,
    beam: int = 1,
    *,
    working: int = 100 * MIB,
    weights: int = 75 * MIB,
    context: int = 500 * MIB,
    error: str | None = None,
    gpu: str = GPU,
) -> CalibrationRow:
    return CalibrationRow(
        gpu_name=gpu,
        gpu_uuid="GPU-1",
        engine="transformers",
        model=model,
        compute_type="float16",
        batch_size=batch,
        beam_size=beam,
        context_bytes=context,
        weights_bytes=weights,
        working_bytes=working,
        peak_bytes=context + weights + working,
        seconds=1.5,
        error=error,
    )


# --- _split_jobs ------------------------------------------------------------------------------
def test_models_are_dealt_round_robin_over_devices_of_the_first_gpu_model() -> None:
    devices = SimulatedGpus(f"2x80GiB:{GPU},1x40GiB:Other GPU").discover()
    models = ["tiny.en", "base", "small", "medium", "large-v3"]
    jobs = _split_jobs(devices, models, "transformers", "float16", [1, 4], [1, 5])
    assert [device.index for device, _ in jobs] == [0, 1]  # the other GPU model measures nothing
    assert jobs[0][1] == CalibrationJob(
        "transformers", "float16", ("tiny.en", "small", "large-v3"), (1, 4), (1, 5)
    )
    assert jobs[1][1].models == ("base", "medium")
    every = [m for _, job in jobs for m in job.models]
    assert sorted(every) == sorted(models)  # each model measured exactly once


def test_devices_left_without_a_model_get_no_job() -> None:
    devices = SimulatedGpus(f"4x80GiB:{GPU}").discover()
    jobs = _split_jobs(devices, ["tiny.en", "base"], "transformers", "float16", [1], [1])
    assert [(d.index, j.models) for d, j in jobs] == [(0, ("tiny.en",)), (1, ("base",))]


def test_no_models_no_jobs() -> None:
    devices = SimulatedGpus(f"2x80GiB:{GPU}").discover()
    assert _split_jobs(devices, [], "transformers", "float16", [1], [1]) == []


# --- sample_from_row --------------------------------------------------------------------------
def test_sample_from_row_keeps_every_measured_figure() -> None:
    sample = sample_from_row(row("base", 8, 5, working=300 * MIB), measured_at=1234.5)
    assert sample.key == ProfileKey(GPU, "transformers", "base", "float16", 8, 5)
    assert sample.working_bytes == 300 * MIB
    assert sample.weights_bytes == 75 * MIB
    assert sample.context_bytes == 500 * MIB
    assert sample.measured_at == 1234.5
    assert sample.estimate_bytes is None  # nothing was estimated: this is a measurement


# --- profile_from_rows ------------------------------------------------------------------------
def test_profile_groups_points_per_model_sorted_by_beam_then_batch() -> None:
    rows = [
        row("tiny.en", 8, 1, working=400 * MIB),
        row("tiny.en", 1, 5, working=250 * MIB),
        row("tiny.en", 1, 1, working=100 * MIB),
        row("base", 1, 1, working=150 * MIB, weights=140 * MIB, context=520 * MIB),
    ]
    profile = profile_from_rows(rows)
    assert profile["format"] == PROFILE_FORMAT
    assert profile["gpu_name_contains"] == GPU
    assert profile["engine"] == "transformers"
    assert profile["compute_types"] == ["default", "float16"]
    assert profile["context_bytes"] == 520 * MIB  # the largest context seen
    assert list(profile["models"]) == ["base", "tiny.en"]
    assert profile["models"]["base"]["weights_bytes"] == 140 * MIB
    assert profile["models"]["tiny.en"]["points"] == [
        {"batch_size": 1, "beam_size": 1, "working_bytes": 100 * MIB},
        {"batch_size": 8, "beam_size": 1, "working_bytes": 400 * MIB},
        {"batch_size": 1, "beam_size": 5, "working_bytes": 250 * MIB},
    ]


def test_rows_with_errors_are_left_out() -> None:
    rows = [
        row("tiny.en", 1, 1, working=100 * MIB),
        row("tiny.en", 64, 1, working=0, context=9000 * MIB, error="CUDA out of memory"),
        row("small", 1, 1, error="no weights"),
    ]
    profile = profile_from_rows(rows)
    assert list(profile["models"]) == ["tiny.en"]
    assert len(profile["models"]["tiny.en"]["points"]) == 1
    assert profile["context_bytes"] == 500 * MIB


def test_no_successful_row_is_an_error() -> None:
    with pytest.raises(ValueError, match="no successful measurement"):
        profile_from_rows([row(error="boom")])
    with pytest.raises(ValueError):
        profile_from_rows([])


def test_the_profile_written_loads_as_a_shipped_profile() -> None:
    """What `calibrate --export-profile` writes is what `memory/profiles/*.json` reads."""
    rows = [
        row("tiny.en", 1, 1, working=100 * MIB),
        row("tiny.en", 4, 1, working=300 * MIB),
        row("tiny.en", 1, 5, working=200 * MIB),
    ]
    data = json.loads(json.dumps(profile_from_rows(rows)))
    profile = GpuProfile.from_json(data)
    key = ProfileKey(GPU, "transformers", "tiny.en", "float16", 4, 1)
    assert profile.matches(key)
    found = ProfileBook([profile]).lookup(key)
    assert found is not None and found.source is EstimateSource.PROFILE
    assert found.context_bytes == 500 * MIB
    assert found.working_bytes >= 300 * MIB  # the measured point, with the profile's margin


# --- batched models: their batch at several occupancies ---------------------------------------
def cuda(name: str = "NVIDIA H200", total: int = 143_771 * MIB) -> DeviceReading:
    return DeviceReading(0, "GPU-1", name, DeviceKind.CUDA, total, 0, total, 0.0)


def test_batched_models_get_the_rows_the_scheduler_would_give_them() -> None:
    settings = Settings()
    found = batch_rows_for(
        settings, cuda(), "transformers", "float16", ["large-v3", "large-v3-turbo"]
    )
    assert found == (("large-v3", 256), ("large-v3-turbo", 256))
    small = batch_rows_for(settings, cuda("NVIDIA X", 24 * 1024**3), "transformers",
                           "float16", ["large-v3"])  # fmt: skip
    assert small == (("large-v3", 32),)
    fixed = replace(settings, batch_rows=48)
    assert batch_rows_for(fixed, cuda(), "transformers", "float16", ["tiny"]) == (("tiny", 48),)
    assert batch_rows_for(settings, cuda(), "faster-whisper", "float16", ["tiny"]) == ()
    simulated = replace(cuda(), kind=DeviceKind.SIMULATED)
    assert batch_rows_for(settings, simulated, "transformers", "float16", ["tiny"]) == ()


def test_each_job_names_the_batch_sizes_of_its_own_models() -> None:
    devices = SimulatedGpus(f"2x80GiB:{GPU}").discover()
    sizes = (("tiny.en", (64, 128, 256)), ("base", (64, 128, 256)), ("large-v3", (40, 80, 168)))
    jobs = _split_jobs(
        devices, ["tiny.en", "base", "large-v3"], "transformers", "float16", [1], [5],
        batch_sizes_of_models=sizes,
    )  # fmt: skip
    assert jobs[0][1].batch_sizes_of_models == (sizes[0], sizes[2])
    assert jobs[0][1].batch_sizes_of("large-v3") == (40, 80, 168)
    assert jobs[0][1].batch_sizes_of("base") == ()
    assert jobs[1][1].batch_sizes_of_models == (sizes[1],)


def occupancy_row(
    rows: int, workspace: int, model: str = "large-v3", beams: int = 1
) -> CalibrationRow:
    """A batch of `rows` rows, all in use, at `beams` beams a window."""
    return replace(
        row(model, rows, OCCUPANCY_BEAM, working=workspace, weights=3 * 1024**3),
        batch_rows=rows,
        beams=beams,
    )


def test_occupancy_rows_are_stored_as_occupancy_samples_the_estimator_fits() -> None:
    rows = [occupancy_row(k, 1_000 * MIB + k * 10 * MIB) for k in (32, 64, 128, 256)]
    book = CalibrationBook(50, 1.2)
    book.load(sample_from_row(r, measured_at=1.0) for r in rows)
    found = book.batch_workspace(GPU, ModelKey("transformers", "large-v3", "default"))
    assert found == (Workspace(1_000 * MIB, 10 * MIB), 4)
    assert book.weights(GPU, ModelKey("transformers", "large-v3", "float16")) == (3 * 1024**3, 4)


def test_a_profile_keeps_a_batched_models_sizes_and_their_fit() -> None:
    rows = [occupancy_row(k, 1_000 * MIB + k * 10 * MIB) for k in (64, 32)]
    rows.append(occupancy_row(64, 1_500 * MIB, beams=5))
    rows.append(row("tiny.en", 1, 1))
    profile = json.loads(json.dumps(profile_from_rows(rows)))
    batch = profile["models"]["large-v3"]["batch"]
    assert profile["models"]["large-v3"]["points"] == []
    assert batch["rows"] == 64  # the largest batch measured
    assert [(p["rows_in_use"], p["beams"]) for p in batch["points"]] == [(32, 1), (64, 1), (64, 5)]
    fit = batch["fit"]
    assert fit["fixed_bytes"] + 64 * fit["per_row_bytes"] >= 1_500 * MIB  # covers the beams
    loaded = GpuProfile.from_json(profile)
    assert loaded.model("tiny.en") is not None
    large = loaded.model("large-v3")
    assert large is not None and not large.per_task  # measured only as a batch
    assert large.batch_workspace == Workspace(fit["fixed_bytes"], fit["per_row_bytes"])
    key = ProfileKey(GPU, "transformers", "large-v3", "float16", 1, 5)
    book = ProfileBook([loaded])
    assert book.lookup(key) is None  # no task curve to estimate a task from
    found = book.batch(key)
    assert found is not None and found.weights_bytes == math.ceil(3 * 1024**3 * PROFILE_MARGIN)
    assert found.workspace.at(64) >= 1_500 * MIB * PROFILE_MARGIN
