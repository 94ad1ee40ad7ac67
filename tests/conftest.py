"""Shared test configuration: markers, and skipping `gpu` tests where there is no CUDA GPU.

Whether a CUDA GPU is present is decided without importing torch or starting a process: an
NVIDIA driver device node and `nvidia-smi` on the PATH, and CUDA_VISIBLE_DEVICES not hiding
every device. `GPUSCRIBE_TEST_GPU=1` forces `gpu` tests on, `=0` forces them off.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

import pytest

# `from support.audio import ...` works however pytest is started.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def cuda_gpu_present() -> bool:
    forced = os.environ.get("GPUSCRIBE_TEST_GPU", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    if shutil.which("nvidia-smi") is None:
        return False
    return any(glob.glob("/dev/nvidia[0-9]*"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where there is none)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_gpu_present():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (no NVIDIA device here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
