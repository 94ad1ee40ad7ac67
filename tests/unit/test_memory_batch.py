"""The batch a model gets on a GPU (rows, cache, workspace) and the workspace fit."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from gpuscribe.memory.architectures import ARCHITECTURES, weights_bytes
from gpuscribe.memory.batch import (
    BATCH_SHARE,
    MAX_ROWS,
    MIN_ROWS,
    ROW_STEP,
    OccupancySample,
    Workspace,
    batch_shape,
    calibration_rows,
    choose_rows,
    fit_workspace,
    plan_batch,
    row_bytes,
    shape_of,
    task_working_bytes,
)
from gpuscribe.memory.types import GIB, MIB
from gpuscribe.workers.engines.batched.decoder import DecoderShape

CONTEXT = int(1.21 * GIB)  # the shipped H200 profile's context
GPUS = {  # total memory as NVML reports it
    "24 GiB": 24 * GIB,
    "H100 80GB": 81_559 * MIB,
    "H200": 143_771 * MIB,
}


def rows_for(model: str, total: int, *, cap: float = 0.9, batch_rows: int = 0) -> int:
    shape = shape_of(model, "float16")
    assert shape is not None
    return choose_rows(
        total_bytes=total,
        cap_fraction=cap,
        context_bytes=CONTEXT,
        weights_bytes=weights_bytes(model, "float16", cuda=True) or 0,
        shape=shape,
        batch_rows=batch_rows,
    )


@pytest.mark.parametrize("model", ["large-v3", "large-v3-turbo", "tiny"])
def test_row_bytes_are_the_engines(model: str) -> None:
    arch = ARCHITECTURES[model]
    engine = DecoderShape(
        layers=arch.decoder_layers,
        heads=arch.attention_heads,
        head_dim=arch.d_model // arch.attention_heads,
        d_model=arch.d_model,
        vocab=arch.vocab_size,
        max_len=arch.max_target_positions,
        frames=arch.max_source_positions,
    )
    assert row_bytes(arch, 2) == engine.row_bytes(2)
    assert row_bytes(arch, 4) == engine.row_bytes(4)


def test_a_large_v3_row_is_319_mb_and_a_turbo_row_40_mb() -> None:
    assert row_bytes(ARCHITECTURES["large-v3"], 2) == 319_160_320
    assert row_bytes(ARCHITECTURES["large-v3-turbo"], 2) == 39_895_040
    large = shape_of("large-v3", "float32")
    assert large is not None and large.row_bytes == 2 * 319_160_320


@pytest.mark.parametrize(
    ("model", "gpu", "rows"),
    [
        ("large-v3", "24 GiB", 32),
        ("large-v3", "H100 80GB", 168),
        ("large-v3", "H200", 256),
        ("large-v3-turbo", "24 GiB", 216),
        ("large-v3-turbo", "H100 80GB", 256),
        ("large-v3-turbo", "H200", 256),
    ],
)
def test_auto_rows_at_the_default_cap(model: str, gpu: str, rows: int) -> None:
    assert rows_for(model, GPUS[gpu]) == rows


@pytest.mark.parametrize("model", ["tiny", "medium", "large-v3", "large-v3-turbo"])
@pytest.mark.parametrize("total_gib", [8, 12, 16, 24, 40, 48, 80, 141])
def test_auto_rows_fit_in_the_share_of_the_cap(model: str, total_gib: int) -> None:
    total = total_gib * GIB
    rows = rows_for(model, total)
    assert MIN_ROWS <= rows <= MAX_ROWS
    assert rows % ROW_STEP == 0
    shape = shape_of(model, "float16")
    assert shape is not None
    plan = plan_batch(rows, shape)
    weights = weights_bytes(model, "float16", cuda=True) or 0
    if rows > MIN_ROWS:
        assert CONTEXT + weights + plan.batch_bytes <= total * 0.9 * BATCH_SHARE
    if rows < MAX_ROWS:  # one more step of rows would not have fitted
        more = plan_batch(rows + ROW_STEP, shape)
        assert CONTEXT + weights + more.batch_bytes > total * 0.9 * BATCH_SHARE


def test_a_lower_cap_gives_fewer_rows() -> None:
    assert rows_for("large-v3", GPUS["H100 80GB"], cap=0.5) < rows_for(
        "large-v3", GPUS["H100 80GB"]
    )


def test_a_set_number_of_rows_is_taken_as_given() -> None:
    assert rows_for("large-v3", 24 * GIB, batch_rows=200) == 200
    assert rows_for("large-v3", 141 * GIB, batch_rows=3) == 3


def test_a_gpu_too_small_still_gets_the_smallest_batch_for_the_ledger_to_refuse() -> None:
    assert rows_for("large-v3", 4 * GIB) == MIN_ROWS == 8  # a window's 5 beams fit


def test_a_calibrated_workspace_replaces_the_formula() -> None:
    shape = shape_of("large-v3", "float16")
    assert shape is not None
    small = Workspace(fixed_bytes=GIB, per_row_bytes=MIB)
    rows = choose_rows(
        total_bytes=24 * GIB,
        cap_fraction=0.9,
        context_bytes=CONTEXT,
        weights_bytes=3 * GIB,
        shape=shape,
        workspace=small,
    )
    assert rows > rows_for("large-v3", 24 * GIB)
    plan = plan_batch(rows, shape, small)
    assert plan.workspace_bytes == GIB + rows * MIB
    assert plan.cache_bytes == rows * shape.row_bytes
    assert plan.batch_bytes == plan.cache_bytes + plan.workspace_bytes


def test_the_workspace_formula_is_named_parts_of_the_architecture() -> None:
    large = batch_shape(ARCHITECTURES["large-v3"], "float16")
    # one encoder batch (32 windows of 20 widths, as the H100's calibration measured) and two
    # batches of encoder output: about 2.95 GiB; a row beyond its cache: about 22 MB
    assert 2.9 * GIB < large.workspace.fixed_bytes < 3.0 * GIB
    assert 20e6 < large.workspace.per_row_bytes < 24e6
    assert large.window_hidden_bytes == 1500 * 1280 * 2


def test_a_tasks_own_memory_is_small_and_grows_with_its_windows_and_batch() -> None:
    shape = shape_of("large-v3", "float16")
    assert shape is not None
    hidden = shape.window_hidden_bytes
    clip = task_working_bytes(shape, 1, 20.0)  # one window
    assert clip == 16 * MIB + hidden < 24 * MIB
    assert task_working_bytes(shape, 1, 95.0) == clip + 3 * hidden  # four windows
    hour = task_working_bytes(shape, 1, 3600.0)
    assert hour == 16 * MIB + 16 * hidden < 96 * MIB  # at most 16 windows kept
    assert task_working_bytes(shape, 16, 3600.0) == hour
    assert task_working_bytes(shape, 32, 3600.0) == hour + 16 * hidden
    # without word timestamps no encoder output outlives its rows
    assert task_working_bytes(shape, 32, 3600.0, word_timestamps=False) == 16 * MIB


# --- the workspace fit ------------------------------------------------------------------------
def test_the_fit_recovers_a_line() -> None:
    samples = [OccupancySample(k, 1000 + 10 * k) for k in (8, 32, 128, 256)]
    assert fit_workspace(samples) == Workspace(1000, 10)


def test_the_fit_covers_every_sample() -> None:
    samples = [
        OccupancySample(16, 5_000),
        OccupancySample(16, 5_600),
        OccupancySample(64, 6_000),
        OccupancySample(128, 9_500),
        OccupancySample(256, 12_000),
    ]
    fit = fit_workspace(samples)
    assert fit is not None
    for sample in samples:
        assert fit.at(sample.rows_in_use) >= sample.workspace_bytes
    assert any(fit.at(s.rows_in_use) == s.workspace_bytes for s in samples)  # no slack beyond


def test_the_fit_never_has_a_negative_slope() -> None:
    fit = fit_workspace([OccupancySample(8, 9_000), OccupancySample(64, 7_000)])
    assert fit == Workspace(9_000, 0)


def test_one_occupancy_is_no_fit() -> None:
    assert fit_workspace([]) is None
    assert fit_workspace([OccupancySample(64, 1), OccupancySample(64, 2)]) is None
    assert fit_workspace([OccupancySample(0, 1), OccupancySample(64, 2)]) is None


@pytest.mark.parametrize(
    ("rows", "sizes"),
    [(256, (64, 128, 256)), (168, (40, 80, 168)), (32, (8, 16, 32)), (8, (8,)), (3, (3,))],
)
def test_calibration_loads_a_batch_at_several_sizes_up_to_its_rows(
    rows: int, sizes: tuple[int, ...]
) -> None:
    """Sizes are multiples of ROW_STEP (the rows a scheduler could give), the rows themselves
    included, never above them."""
    assert calibration_rows(rows) == sizes


def test_the_formula_covers_every_batch_the_h100_measured() -> None:
    """The formula is the estimate for GPU models no profile measured: it must not fall below
    what a measured GPU held (every point of the shipped H100 batch profile, greedy and 5 beams:
    a batch is charged once, whatever the beams of the tasks that fill it)."""
    folder = resources.files("gpuscribe.memory") / "profiles"
    profile = json.loads((folder / "h100-transformers-float16-batch.json").read_text())
    checked = 0
    for model, entry in profile["models"].items():
        shape = shape_of(model, "float16")
        assert shape is not None
        for point in entry["batch"]["points"]:
            rows, measured = point["rows_in_use"], point["workspace_bytes"]
            assert shape.workspace.at(rows) >= measured, (model, rows, point["beams"])
            checked += 1
    assert checked == 36  # six models at three sizes, greedy and 5 beams
