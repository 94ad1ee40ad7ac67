"""On a real CUDA GPU: NVML telemetry, a node with the transformers engine, the hard backstop
against out-of-memory, and no CUDA context in the scheduler's process. Run with `make test-gpu`."""

from __future__ import annotations

import os
import queue
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from gpuscribe.config import load_settings
from gpuscribe.domain import NewTask, Priority, TaskState, TranscriptionOptions
from gpuscribe.node.node import Node
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.telemetry.nvml import NvmlTelemetry
from gpuscribe.workers.handle import ProcessWorker
from gpuscribe.workers.messages import (
    DeviceRef,
    FailureKind,
    RunTask,
    TaskCompleted,
    TaskFailed,
    WorkerReady,
)

pytestmark = pytest.mark.gpu

GIB = 1024**3


def _wav(path: Path, seconds: float) -> Path:
    samples = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 2000).astype(
        np.int16
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return path


def _settings(tmp_path: Path, **flags: object) -> object:
    base = {"data_dir": str(tmp_path), "benchmark_only": True, "default_engine": "transformers",
            "benchmark_tokens": 16, "devices": "0"}  # fmt: skip
    return load_settings(flags={**base, **flags}, env={})


def test_nvml_sees_every_gpu_by_uuid() -> None:
    nvml = NvmlTelemetry()
    try:
        devices = nvml.discover()
        assert devices and all(d.uuid.startswith("GPU-") for d in devices)
        assert all(d.kind is DeviceKind.CUDA and d.memory_total_bytes > 0 for d in devices)
        assert all(d.compute_capability is not None for d in devices)
    finally:
        nvml.close()


def test_node_transcribes_on_the_gpu_without_a_context_here(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    node = Node(settings)  # type: ignore[arg-type]
    node.start()
    try:
        audio = _wav(tmp_path / "a.wav", 65.0)
        options = TranscriptionOptions(
            model="tiny", engine="transformers", batch_size=2, beam_size=1
        )
        task, _ = node.submit(NewTask(Priority.NORMAL, options, str(audio), 65.0, "wav"))
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            current = node.store.get(task.id)
            assert current is not None
            if current.state.is_final:
                break
            time.sleep(0.5)
        assert current.state is TaskState.COMPLETED, current.error
        assert current.memory_peak_bytes and current.memory_peak_bytes > 0
        reading = node.telemetry.read(current.gpu_uuid or "")
        assert os.getpid() not in {p.pid for p in reading.processes}
        assert node.slots[current.gpu_uuid or ""].ledger.snapshot().context_bytes > 0
    finally:
        node.stop()


def test_out_of_memory_is_caught_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    nvml = NvmlTelemetry()
    device = nvml.discover()[0]
    nvml.close()
    events: queue.Queue[object] = queue.Queue()
    ref = DeviceRef(DeviceKind.CUDA, device.uuid, device.index, device.name)
    worker = ProcessWorker(ref, _settings(tmp_path), events.put)  # type: ignore[arg-type]
    worker.start()
    try:
        ready = events.get(timeout=120)
        assert isinstance(ready, WorkerReady) and ready.context_bytes > 0
        audio = str(_wav(tmp_path / "b.wav", 30.0))
        options = TranscriptionOptions(model="large-v3", engine="transformers", batch_size=1)
        worker.run(
            RunTask("t1", "k1", audio, 30.0, options, admitted_bytes=ready.context_bytes + GIB)
        )
        assert _final(events).kind is FailureKind.OUT_OF_MEMORY  # type: ignore[union-attr]
        small = TranscriptionOptions(model="tiny", engine="transformers", batch_size=1)
        worker.run(
            RunTask("t2", "k2", audio, 30.0, small, admitted_bytes=device.memory_total_bytes)
        )
        assert isinstance(_final(events), TaskCompleted)
    finally:
        worker.stop()


def _final(events: queue.Queue[object]) -> TaskCompleted | TaskFailed:
    while True:
        event = events.get(timeout=240)
        if isinstance(event, TaskCompleted | TaskFailed):
            return event
