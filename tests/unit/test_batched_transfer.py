"""batched/transfer.py on the CPU: a host array, contiguous or not, arrives as an equal tensor
on the device (CUDA's pinned path runs in tests/gpu, through the batch)."""

from __future__ import annotations

import numpy as np
import pytest

from gpuscribe.workers.engines.batched.transfer import upload

torch = pytest.importorskip("torch")


def test_an_array_arrives_equal_whatever_its_layout() -> None:
    values = np.arange(12, dtype=np.int64).reshape(3, 4)
    for array in (values, values.T, values[:, ::2]):
        tensor = upload(torch, array, torch.device("cpu"))
        assert tensor.device.type == "cpu"
        assert np.array_equal(tensor.numpy(), array)
