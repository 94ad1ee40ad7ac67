"""open_telemetry: simulated if asked, NVML where it works and has a GPU, else the CPU."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pynvml
import pytest
from test_telemetry_nvml import FakeGpu, FakeNvml

from gpuscribe.config import Settings
from gpuscribe.telemetry.cpu import CpuTelemetry
from gpuscribe.telemetry.detect import open_telemetry
from gpuscribe.telemetry.nvml import NvmlTelemetry
from gpuscribe.telemetry.simulated import SimulatedGpus


@pytest.fixture(autouse=True)
def no_cuda_frameworks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any `import torch` (or CTranslate2) during detection fails the test."""
    for name in ("torch", "ctranslate2", "faster_whisper", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)
    yield


def test_simulation_wins() -> None:
    telemetry = open_telemetry(Settings(simulate_gpus="2x24GiB"))
    assert isinstance(telemetry, SimulatedGpus)
    assert len(telemetry.discover()) == 2


def test_bad_simulation_spec_is_an_error() -> None:
    with pytest.raises(ValueError, match="3y"):
        open_telemetry(Settings(simulate_gpus="3y"))


def test_nvml_with_a_gpu() -> None:
    fake = FakeNvml([FakeGpu("GPU-a")])
    telemetry = open_telemetry(Settings(), nvml=fake.module())
    assert isinstance(telemetry, NvmlTelemetry)
    assert [d.uuid for d in telemetry.discover()] == ["GPU-a"]
    telemetry.close()
    assert fake.shutdown_calls == 1


def test_nvml_without_devices_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml([])
    with caplog.at_level(logging.INFO, logger="gpuscribe.telemetry.detect"):
        telemetry = open_telemetry(Settings(), nvml=fake.module(), cpu_pids=lambda: set())
    assert isinstance(telemetry, CpuTelemetry)
    assert fake.shutdown_calls == 1
    assert "sees no GPU" in caplog.text


def test_nvml_init_failure_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml([FakeGpu("GPU-a")])
    fake.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with caplog.at_level(logging.INFO, logger="gpuscribe.telemetry.detect"):
        telemetry = open_telemetry(Settings(), nvml=fake.module())
    assert isinstance(telemetry, CpuTelemetry)
    assert "NVMLError_DriverNotLoaded" in caplog.text


def test_this_machine_without_gpu_uses_the_real_binding_and_falls_back() -> None:
    """The real pynvml here finds no NVML library; detection must not raise."""
    telemetry = open_telemetry(Settings())
    assert isinstance(telemetry, CpuTelemetry)
    assert telemetry.discover()[0].uuid == "cpu"
