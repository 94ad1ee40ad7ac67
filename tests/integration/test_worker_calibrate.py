"""workers.calibrate on the CPU: a batched model is measured at several occupancies (the same
code path as on a GPU, where the figures are the device's; here they are the process's resident
memory). The tiny random test architecture keeps it to seconds."""

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


def test_a_batched_model_is_measured_at_each_occupancy(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuscribe.workers.engines.transformers_engine import TransformersEngine

    registry = importlib.import_module("gpuscribe.workers.engines.registry")
    monkeypatch.setattr(
        registry,
        "create_engine",
        lambda name, settings: TransformersEngine(tiny_config_for_tests=True, benchmark_tokens=20),
    )
    job = CalibrationJob(
        "transformers", "float32", ("tiny.en",), (1, 4), (1, 5), batch_rows=(("tiny.en", 16),)
    )
    rows = measure(CPU, Settings(), job)
    assert [(r.batch_size, r.beam_size, r.batch_rows) for r in rows] == [
        (8, OCCUPANCY_BEAM, 16),
        (16, OCCUPANCY_BEAM, 16),
    ]  # the occupancies, not the batch/beam grid
    assert all(r.error is None and r.occupancy for r in rows)
    batch = profile_from_rows(rows)["models"]["tiny.en"]["batch"]
    assert batch["rows"] == 16 and len(batch["points"]) == 2 and "fit" in batch
