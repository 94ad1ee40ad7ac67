"""One test per defect of the design's sketch (docs/DESIGN.md, What we changed and why), each
written so that the sketch's behaviour fails it, through gpuscribe's public pieces."""

from __future__ import annotations

import ast
import threading
import time
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

import gpuscribe
from gpuscribe.config import load_settings
from gpuscribe.domain import Priority, Task, TaskState, TranscriptionOptions
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.ledger import DeviceLedger, NotAdmitted
from gpuscribe.memory.types import (
    GIB,
    MIB,
    CalibrationSample,
    EstimateSource,
    MemoryEstimate,
    ModelKey,
    ProfileKey,
)
from gpuscribe.scheduling.placement import LeastAdmitted
from gpuscribe.scheduling.planner import DeviceState, plan
from gpuscribe.scheduling.priority import order_queue
from gpuscribe.store.open import open_store
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.telemetry.cache import CachedTelemetry
from gpuscribe.telemetry.simulated import SimulatedGpus
from support.audio import AudioSet
from support.server import ServiceProcess, submit, wait_done

SRC = Path(gpuscribe.__file__).resolve().parent
TINY = ModelKey("faster-whisper", "tiny", "float16")


def _estimate(working: float, weights: float = 0.1, context: float = 1.2) -> MemoryEstimate:
    return MemoryEstimate(
        context_bytes=int(context * GIB),
        weights_bytes=int(weights * GIB),
        working_bytes=int(working * GIB),
        source=EstimateSource.PROFILE,
    )


def _ledger(total_gib: float = 24, max_tasks: int = 5, index: int = 0) -> DeviceLedger:
    return DeviceLedger(
        f"GPU-{index}",
        index,
        int(total_gib * GIB),
        cap_fraction=0.9,
        reserve_bytes=GIB,
        max_tasks=max_tasks,
    )


def _task(task_id: str, priority: Priority, created_at: float, model: str = "tiny") -> Task:
    return Task(
        id=task_id,
        state=TaskState.QUEUED,
        priority=priority,
        options=TranscriptionOptions(model=model, engine="faster-whisper", compute_type="float16"),
        audio_path=f"/nowhere/{task_id}.wav",
        audio_seconds=30.0,
        audio_format="wav",
        created_at=created_at,
    )


# --- `GPUMemoryPool.allocate` deadlocked on its own non-reentrant lock ---------------------------
def test_first_allocation_does_not_deadlock() -> None:
    ledger = _ledger()
    errors: list[BaseException] = []

    def admit_many(prefix: str) -> None:
        try:
            for i in range(20):
                ledger.admit(f"{prefix}-{i}", _estimate(0.01), TINY, foreign_bytes=0)
                ledger.available_bytes()
                ledger.snapshot()
                ledger.release(f"{prefix}-{i}")
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=admit_many, args=("first",), daemon=True)
    first.start()
    first.join(timeout=5)
    assert not first.is_alive(), "the first allocation deadlocked"
    threads = [threading.Thread(target=admit_many, args=(f"t{n}",), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "concurrent allocations deadlocked"
    assert not errors, errors
    snapshot = ledger.snapshot()
    assert snapshot.tasks_running == 0
    # Context and the resident model's weights stay charged; no working memory is left over.
    assert snapshot.admitted_bytes == int(1.2 * GIB) + int(0.1 * GIB)


# --- `get_task_count` always returned 0: MAX_TASKS_PER_GPU was never enforced -------------------
def test_max_tasks_per_gpu_is_enforced() -> None:
    assert load_settings(env={"MAX_TASKS_PER_GPU": "3"}).max_tasks_per_gpu == 3
    assert load_settings(env={}).max_tasks_per_gpu == 5
    ledger = _ledger(total_gib=80, max_tasks=3)
    for i in range(3):
        ledger.admit(f"t{i}", _estimate(0.1), TINY, foreign_bytes=0)
    with pytest.raises(NotAdmitted) as refused:
        ledger.admit("t3", _estimate(0.1), TINY, foreign_bytes=0)
    assert "3 of 3" in refused.value.reason, refused.value.reason
    ledger.release("t0")
    ledger.admit("t3", _estimate(0.1), TINY, foreign_bytes=0)

    # A scheduling pass over one roomy GPU places no more than the cap.
    devices = [DeviceState(_ledger(80, max_tasks=5), "GPU", DeviceKind.CUDA, 0, True)]
    queue = [_task(f"q{i}", Priority.NORMAL, 100.0 + i) for i in range(8)]
    result = plan(
        queue,
        devices,
        lambda task, device: _estimate(0.1),
        now=200.0,
        aging_seconds=120.0,
        starvation_seconds=300.0,
    )
    assert len(result.placements) == 5
    assert len(result.waiting) == 3


# --- priorities were sorted as strings: 'high' < 'low' < 'normal' ------------------------------
def test_priorities_are_ordered_as_integers() -> None:
    assert Priority.URGENT < Priority.HIGH < Priority.NORMAL < Priority.LOW
    assert [p.label for p in sorted(Priority)] == ["urgent", "high", "normal", "low"]
    assert Priority.parse("low") > Priority.parse("normal")
    now = 1000.0
    queue = [
        _task("low", Priority.LOW, now - 1),
        _task("high", Priority.HIGH, now - 1),
        _task("normal", Priority.NORMAL, now - 1),
        _task("urgent", Priority.URGENT, now - 1),
    ]
    ordered = order_queue(queue, now=now, aging_seconds=120.0)
    assert [t.id for t in ordered] == ["urgent", "high", "normal", "low"]


# --- `get_optimal_gpu_for_task` returned GPU 0 when nothing fitted ------------------------------
def test_no_gpu_is_chosen_when_nothing_fits() -> None:
    ledgers = [_ledger(8, index=i) for i in range(2)]
    huge = _estimate(20)
    assert not any(ledger.fit(huge, TINY, foreign_bytes=0).ok for ledger in ledgers)
    choice = LeastAdmitted([ledger.copy() for ledger in ledgers], [0, 0], {})
    refused = choice.admit("big", TINY, lambda slot: huge)
    assert isinstance(refused, str), refused  # why it waits, never a device (GPU 0 or other)

    devices = [DeviceState(ledger, "GPU 8GB", DeviceKind.CUDA, 0, True) for ledger in ledgers]
    result = plan(
        [_task("big", Priority.URGENT, 1.0)],
        devices,
        lambda t, d: huge,
        now=2.0,
        aging_seconds=120.0,
        starvation_seconds=300.0,
    )
    assert result.placements == []
    assert "big" in result.impossible and "cap" in result.impossible["big"]
    assert all(ledger.admitted_bytes == 0 for ledger in ledgers)


# --- `load_and_calibrate_model` simulated the measurement (sleep, 0.9 x estimate) ---------------
@pytest.mark.slow
def test_calibration_is_measured(cpu_service: ServiceProcess, audio: AudioSet) -> None:
    url = cpu_service.url
    # One after the other: a peak is attributable to a task only when it ran alone.
    done = {}
    for path in (audio.speech(4).path, audio.silence(60)):
        task_id = submit(url, path)["id"]
        done[task_id] = wait_done(url, task_id, timeout=240)
    for task in done.values():
        assert task["state"] == "completed", task
        peak, estimate = task["memory_peak_bytes"], task["memory_estimate_bytes"]
        assert peak is not None and peak > 0, f"no measured peak recorded: {task}"
        assert estimate is not None and estimate > 0, task
        assert abs(peak - 0.9 * estimate) > MIB, f"peak = 0.9 x estimate, not measured: {task}"
    peaks = {task["memory_peak_bytes"] for task in done.values()}
    assert len(peaks) == 2, f"8 s and 60 s of audio measured the same peak: {peaks}"
    rows = httpx.get(f"{url}/v1/calibration", timeout=10).json()["calibration"]
    tiny = [r for r in rows if r["model"] == "tiny.en"]
    assert tiny, rows
    assert sum(r["sample_count"] for r in tiny) >= 2, tiny
    for row in tiny:
        assert row["max_working_bytes"] is not None and row["max_working_bytes"] > 0, row
        if row["mean_error_ratio"] is not None:
            assert abs(row["mean_error_ratio"] - 1 / 0.9) > 1e-3, row


# --- free memory ignored other processes on the GPU ---------------------------------------------
def test_admission_counts_memory_other_processes_hold() -> None:
    gpus = SimulatedGpus("1x24GiB")
    uuid = gpus.discover()[0].uuid
    gpus.set_foreign(uuid, 18 * GIB, pid=4242)
    reading = gpus.read(uuid)
    assert reading.memory_used_bytes == 18 * GIB
    assert reading.memory_free_bytes == 6 * GIB
    foreign = reading.memory_used_bytes - reading.used_by(set())
    ledger = _ledger(24)
    need = _estimate(4)  # 5.3 GiB: fits an empty 24 GiB GPU, not one with 18 GiB taken
    assert ledger.fit(need, TINY, foreign_bytes=0).ok
    fit = ledger.fit(need, TINY, foreign_bytes=foreign)
    assert not fit.ok
    assert "other processes" in fit.reason, fit.reason
    with pytest.raises(NotAdmitted):
        ledger.admit("t", need, TINY, foreign_bytes=foreign)


# --- a 30 s cached snapshot is too stale to admit work on ---------------------------------------
def test_admission_reads_fresh_telemetry() -> None:
    gpus = SimulatedGpus("1x24GiB")
    uuid = gpus.discover()[0].uuid
    clock = [0.0]
    cached = CachedTelemetry(gpus, ttl_seconds=30.0, clock=lambda: clock[0])
    assert cached.read(uuid).memory_used_bytes == 0
    gpus.set_foreign(uuid, 10 * GIB)
    clock[0] = 1.0
    assert cached.fresh().read(uuid).memory_used_bytes == 10 * GIB
    # The display cache of the service itself is short-lived, never the sketch's 30 s.
    display = CachedTelemetry(gpus, clock=lambda: clock[0])
    assert display.read(uuid).memory_used_bytes == 10 * GIB
    gpus.set_foreign(uuid, 2 * GIB)
    clock[0] = 6.0
    assert display.read(uuid).memory_used_bytes == 2 * GIB


# --- `nvmlDeviceGetProperties` is not an NVML call ------------------------------------------------
def test_compute_capability_from_nvml_cuda_compute_capability() -> None:
    import pynvml

    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    assert not [p for p, text in sources.items() if "nvmlDeviceGetProperties" in text]
    assert not hasattr(pynvml, "nvmlDeviceGetProperties")
    assert hasattr(pynvml, "nvmlDeviceGetCudaComputeCapability")
    nvml = (SRC / "telemetry" / "nvml.py").read_text()
    assert "CudaComputeCapability" in nvml


@pytest.mark.gpu
def test_compute_capability_is_read_on_a_real_gpu() -> None:
    from gpuscribe.telemetry.nvml import NvmlTelemetry

    telemetry = NvmlTelemetry()
    try:
        readings = telemetry.discover()
    finally:
        telemetry.close()
    assert readings
    for reading in readings:
        assert reading.compute_capability is not None, reading
        assert reading.compute_capability >= (3, 0), reading
        assert reading.name and reading.memory_total_bytes > 0, reading


# --- calibration was keyed by GPU index and lost on restart ---------------------------------------
def test_calibration_is_keyed_by_gpu_model_and_persisted(tmp_path: Path) -> None:
    assert "gpu_name" in {f.name for f in fields(ProfileKey)}
    assert not {"index", "gpu_index", "uuid", "gpu_uuid"} & {f.name for f in fields(ProfileKey)}
    h100 = ProfileKey("NVIDIA H100 80GB HBM3", "faster-whisper", "tiny", "float16", 1, 5)
    a10 = ProfileKey("NVIDIA A10", "faster-whisper", "tiny", "float16", 1, 5)
    samples = [
        CalibrationSample(
            h100,
            working_bytes=(100 + i) * MIB,
            weights_bytes=75 * MIB,
            context_bytes=500 * MIB,
            measured_at=1000.0 + i,
            estimate_bytes=120 * MIB,
        )
        for i in range(3)
    ]
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    for sample in samples:
        store.add_sample(sample)
    store.close()
    reopened = open_store(url)
    try:
        kept = reopened.samples(h100, limit=10)
        assert sorted(s.working_bytes for s in kept) == [100 * MIB, 101 * MIB, 102 * MIB]
        assert reopened.samples(a10, limit=10) == []
        book = CalibrationBook(sample_size=50, confidence_factor=1.2)
        book.load(reopened.all_samples(per_key_limit=50))
    finally:
        reopened.close()
    # Samples measured on any H100 (whatever its index) serve every H100, and no other model.
    working = book.working(h100)
    assert working is not None and working[1] == 3
    assert working[0] >= 102 * MIB
    assert book.working(a10) is None


# --- weights charged to every task, even when tasks share one loaded model -----------------------
def test_weights_are_charged_once_per_gpu() -> None:
    ledger = _ledger(80)
    estimate = _estimate(working=0.5, weights=3.0, context=1.2)
    ledger.admit("a", estimate, TINY, foreign_bytes=0)
    ledger.admit("b", estimate, TINY, foreign_bytes=0)
    expected = estimate.context_bytes + estimate.weights_bytes + 2 * estimate.working_bytes
    assert ledger.admitted_bytes == expected
    other = ModelKey("faster-whisper", "small", "float16")
    ledger.admit("c", estimate, other, foreign_bytes=0)
    assert ledger.admitted_bytes == expected + estimate.weights_bytes + estimate.working_bytes


# --- `print` everywhere instead of logging; a module-level function used `self` ----------------
def test_library_code_logs_instead_of_printing() -> None:
    prints: list[str] = []
    selfish: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        tree = ast.parse(path.read_text(), filename=str(path))
        if relative.parts[0] != "cli":
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "print"
                ):
                    prints.append(f"{relative}:{node.lineno}")
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.posonlyargs + node.args.args
                if args and args[0].arg == "self":
                    selfish.append(f"{relative}:{node.lineno} {node.name}")
    assert not prints, f"print() in library code: {prints}"
    assert not selfish, f"module-level functions taking self: {selfish}"


def test_ledger_never_admits_past_the_cap_under_contention() -> None:
    """The sketch's pool checked and allocated under separate lock takes; the ledger must not
    let racing admissions together pass the cap."""
    ledger = _ledger(24, max_tasks=1000)
    start = threading.Barrier(16)
    admitted: list[str] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        start.wait()
        for i in range(10):
            try:
                ledger.admit(f"r{n}-{i}", _estimate(0.5), TINY, foreign_bytes=0)
            except NotAdmitted:
                continue
            with lock:
                admitted.append(f"r{n}-{i}")

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(16)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert time.monotonic() - began < 10
    assert ledger.admitted_bytes <= ledger.limit_bytes
    assert len(admitted) == (ledger.limit_bytes - int(1.2 * GIB) - int(0.1 * GIB)) // int(0.5 * GIB)
