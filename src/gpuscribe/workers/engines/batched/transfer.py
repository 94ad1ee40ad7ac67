"""Host arrays onto the batch's device without waiting for it.

On CUDA a copy from pageable host memory makes PyTorch synchronize the stream it is queued on;
the batcher's streams hold the decode steps queued ahead of the host, so such a copy would empty
the device's queue. A copy from pinned memory is queued like a kernel and waits for nothing
(PyTorch's pinned-memory cache keeps the buffer until the copy is done).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def upload(torch: Any, values: np.ndarray[Any, Any], device: Any) -> Any:
    """`values` as a tensor on `device`, through pinned memory on CUDA."""
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
