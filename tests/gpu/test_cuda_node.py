"""On a real CUDA GPU: NVML telemetry, a node with the transformers engine, the hard backstop
against out-of-memory, and no CUDA context in the scheduler's process. Run with `make test-gpu`."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from gpuscribe.config import load_settings
from gpuscribe.domain import NewTask, Priority, Task, TaskState, TranscriptionOptions
from gpuscribe.memory.estimator import profile_key_for
from gpuscribe.memory.types import GIB
from gpuscribe.node.node import Node
from gpuscribe.telemetry.base import DeviceKind, DeviceReading
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


def _hog(index: int, nbytes: int) -> subprocess.Popen[str]:
    """A process outside gpuscribe holding `nbytes` (and its own CUDA context) on GPU `index`
    (NVML's numbering)."""
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(index)}
    code = (
        f"import torch,time;x=torch.empty({int(nbytes)},dtype=torch.uint8,device='cuda');"
        "torch.cuda.synchronize();print('held',flush=True);time.sleep(900)"
    )
    hog = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert hog.stdout is not None and hog.stdout.readline().startswith("held")
    return hog


def _wait_final(node: Node, ids: list[str], seconds: float = 300) -> list[Task]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tasks = [t for t in (node.store.get(i) for i in ids) if t is not None]
        if len(tasks) == len(ids) and all(t.state.is_final for t in tasks):
            return tasks
        time.sleep(0.5)
    raise AssertionError("tasks not final in time")


def _hog_bytes(node: Node, device: DeviceReading, options: TranscriptionOptions) -> int:
    """What a process beside gpuscribe holds so that the room left under the cap is half of
    what the first task of `options` needs on `device`, by the node's own estimate (pure
    arithmetic: no CUDA context here): whatever the GPU's size, no such task fits beside it,
    with a wide margin (the estimate moves by far less once contexts and weights are
    measured). The transformers engine's first task on a GPU needs its model's whole batch,
    most of the cap, so the process holds little more than half of the GPU: used memory stays
    well below the memory warning's level, and it is the ledger, not a warning, that keeps
    the tasks away."""
    estimate = node.estimate(profile_key_for(options, device.name), 30.0)
    cap = node.slots[device.uuid].ledger.cap_bytes
    if estimate.total_bytes > cap:
        pytest.skip(f"{options.model} does not fit under the cap of {device.name} at all")
    return cap - estimate.total_bytes // 2


def test_a_gpu_filled_by_another_process_is_avoided_then_used_once_freed(tmp_path: Path) -> None:
    """Six large-v3 tasks while another process holds so much of one GPU that the room left
    under its cap is half of what large-v3 needs there (sized from the estimate, so that the
    test means the same on any GPU size): none fits beside it, so all six run on the other
    GPU, one waiting for a slot. Once that process ends, the next six spread over both GPUs."""
    nvml = NvmlTelemetry()
    devices = nvml.discover()
    nvml.close()
    if len(devices) < 2:
        pytest.skip("needs two GPUs")
    filled, free = devices[0], devices[1]
    options = TranscriptionOptions(model="large-v3", engine="transformers", batch_size=1)
    settings = _settings(tmp_path, devices=f"{filled.index},{free.index}")
    node = Node(settings)  # type: ignore[arg-type]
    hog: subprocess.Popen[str] | None = None
    try:
        hog = _hog(filled.index, _hog_bytes(node, filled, options))
        node.start()
        made = iter(range(100))

        def submit_six() -> list[str]:  # each task owns its audio: it is deleted once final
            paths = [str(_wav(tmp_path / f"c{next(made)}.wav", 30.0)) for _ in range(6)]
            new = [NewTask(Priority.NORMAL, options, path, 30.0, "wav") for path in paths]
            return [node.submit(n)[0].id for n in new]

        first = _wait_final(node, submit_six())
        assert all(t.state is TaskState.COMPLETED for t in first), [t.error for t in first]
        assert {t.gpu_uuid for t in first} == {free.uuid}
        assert node.slots[filled.uuid].memory_warning is None  # the ledger kept them away
        hog.kill()
        hog.wait(30)
        time.sleep(3)  # a fresh NVML reading shows the memory free
        second = _wait_final(node, submit_six())
        assert all(t.state is TaskState.COMPLETED for t in second), [t.error for t in second]
        assert filled.uuid in {t.gpu_uuid for t in second}
    finally:
        if hog is not None:
            hog.kill()
        node.stop()


def _final(events: queue.Queue[object]) -> TaskCompleted | TaskFailed:
    while True:
        event = events.get(timeout=240)
        if isinstance(event, TaskCompleted | TaskFailed):
            return event
