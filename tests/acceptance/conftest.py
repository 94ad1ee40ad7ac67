"""Fixtures of the acceptance suite: one audio set per session (committed speech, other formats
made with PyAV: see support/audio.py), one CPU service shared by the tests that do not kill it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.audio import AudioSet
from support.server import ServiceProcess

# The service on the CPU: NVML may still see GPUs on a GPU machine; hide them from CUDA so the
# service's CPU defaults (faster-whisper, tiny.en) are what these tests exercise.
CPU_ENV = {"CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="session")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSet:
    return AudioSet(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="session")
def cpu_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """`gpuscribe serve` on the CPU with its embedded defaults (tiny.en, faster-whisper)."""
    data_dir: Path = tmp_path_factory.mktemp("cpu-service")
    with ServiceProcess(data_dir, env=CPU_ENV) as service:
        yield service
