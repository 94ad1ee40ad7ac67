"""workers.calibrate on the CPU: a batched model is measured in batches of several sizes, every
row in use at each beam size (the same code path as on a GPU, where the figures are the
device's; here they are the process's resident memory). The tiny random test architecture keeps
it to seconds."""

from __future__ import annotations

import importlib

import pytest

from gpuscribe.config import Settings
from gpuscribe.memory.calibration import OCCUPANCY_BEAM
from gpuscribe.node.calibrate import profile_from_rows
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.calibrate import CalibrationJob, measure
from gpuscribe.workers.messages import DeviceRef

pytest.importorskip("torch")
pytest.importorskip("transformers")

CPU = DeviceRef(DeviceKind.CPU, "cpu", 0, "CPU (test)")


def test_a_batched_model_is_measured_at_each_batch_size_and_beam_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gpuscribe.workers.engines.transformers_engine import TransformersEngine

    registry = importlib.import_module("gpuscribe.workers.engines.registry")
    loads: list[int] = []

    def engine(name: str, settings: Settings) -> TransformersEngine:
        made = TransformersEngine(tiny_config_for_tests=True, benchmark_tokens=20)
        load = made.load

        def counted(*args: object, batch_rows: int = 0) -> object:
            loads.append(batch_rows)
            return load(*args, batch_rows=batch_rows)  # type: ignore[arg-type]

        monkeypatch.setattr(made, "load", counted)
        return made

    monkeypatch.setattr(registry, "create_engine", engine)
    job = CalibrationJob(
        "transformers", "float32", ("tiny.en",), (1, 4), (1, 5),
        batch_sizes_of_models=(("tiny.en", (8, 16)),),
    )  # fmt: skip
    rows = measure(CPU, Settings(), job)
    assert loads == [8, 8, 16]  # the warm-up at the smallest size, then each size once
    assert [(r.batch_size, r.beam_size, r.beams, r.batch_rows) for r in rows] == [
        (8, OCCUPANCY_BEAM, 1, 8),
        (8, OCCUPANCY_BEAM, 5, 8),
        (16, OCCUPANCY_BEAM, 1, 16),
        (16, OCCUPANCY_BEAM, 5, 16),
    ]  # the sizes and beam counts, not the batch/beam grid
    assert all(r.error is None and r.occupancy for r in rows)
    assert {r.weights_bytes for r in rows} == {rows[0].weights_bytes} and rows[0].weights_bytes > 0
    batch = profile_from_rows(rows)["models"]["tiny.en"]["batch"]
    assert batch["rows"] == 16 and len(batch["points"]) == 4 and "fit" in batch
    assert [(p["rows_in_use"], p["beams"]) for p in batch["points"]] == [
        (8, 1), (8, 5), (16, 1), (16, 5)
    ]  # fmt: skip


def test_a_batch_that_does_not_load_is_a_row_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gpuscribe.workers.engines.transformers_engine import TransformersEngine

    registry = importlib.import_module("gpuscribe.workers.engines.registry")

    def engine(name: str, settings: Settings) -> TransformersEngine:
        made = TransformersEngine(tiny_config_for_tests=True, benchmark_tokens=4)
        load = made.load

        def refusing(*args: object, batch_rows: int = 0) -> object:
            if batch_rows > 8:
                raise RuntimeError("CUDA out of memory (test)")
            return load(*args, batch_rows=batch_rows)  # type: ignore[arg-type]

        monkeypatch.setattr(made, "load", refusing)
        return made

    monkeypatch.setattr(registry, "create_engine", engine)
    job = CalibrationJob(
        "transformers", "float32", ("tiny.en",), (1,), (1,),
        batch_sizes_of_models=(("tiny.en", (8, 32)),),
    )  # fmt: skip
    rows = measure(CPU, Settings(), job)
    assert [(r.batch_size, r.error) for r in rows] == [
        (8, None),
        (32, "load: RuntimeError: CUDA out of memory (test)"),
    ]
