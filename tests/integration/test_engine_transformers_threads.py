"""The transformers engine as a worker uses it: several tasks' threads at once, in one process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gpuscribe.workers.engines.transformers_engine import _configure_cuda

pytest.importorskip("torch")
pytest.importorskip("transformers")

# A fresh interpreter, so that transformers resolves its names for the first time while eight
# threads load models at once (as five tasks did on an H100, where one in five failed with
# "cannot import name 'GenerationConfig' from 'transformers'").
LOAD_FROM_THREADS = textwrap.dedent(
    """
    import threading
    from gpuscribe.telemetry.base import DeviceKind
    from gpuscribe.workers.engines.transformers_engine import TransformersEngine
    from gpuscribe.workers.messages import DeviceRef

    engine = TransformersEngine(tiny_config_for_tests=True)
    cpu = DeviceRef(DeviceKind.CPU, "cpu", 0, "cpu")
    barrier = threading.Barrier(8)
    errors = []

    def load():
        barrier.wait()
        try:
            engine.load("tiny", cpu, "default")
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("errors", len(errors))
    for e in errors:
        print(e)
    """
)


def test_models_load_from_many_threads_in_a_fresh_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_FROM_THREADS], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "errors 0" in result.stdout, result.stdout


def test_cuda_setup_keeps_attention_off_cudnn() -> None:
    """cuDNN's attention failed under concurrent generation on an H100 (see `_configure_cuda`);
    the setting is process-wide, so it is restored after the check."""
    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        _configure_cuda(torch)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
