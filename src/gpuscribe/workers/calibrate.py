"""Measuring, inside a worker process on one device, what each model really holds.

For each model: the context (NVML's figure for this process, before any model), the weights (what
the process holds after loading, less before), and for each (batch size, beam size) the peak while
transcribing `batch_size` 30 s windows at once, less what it held before. Random-weight models
decode the full 224 tokens per window (the worst case), so the peak is the most a task can take.

A batched model (the transformers engine on a GPU: the job names its batch sizes) is measured as
a batch instead of the task grid: loaded at each of its batch sizes (`memory.batch.
calibration_rows` of the rows the scheduler gives it), and at each size given every row at once,
for each beam size of the grid (`rows // beams` windows of `beams` beams; in a pooled cache, as
many as its slots and rows hold, `slots.SlotAllocator.fill`). Its weights are its
parameters' bytes; the peak less the context, the weights and the cache is the batch's workspace
at that size, which holds what the load allocated for its rows (the captured steps' memory
pool, the batcher's buffers) and what decoding adds. Those rows carry `beam_size` 0
(`OCCUPANCY_BEAM`), the batch's rows as `batch_size` and the beams as `beams`; stored, they are
what the estimator fits (`memory.batch.fit_workspace`). Windows that end early (a real model on
noise) would leave rows idle, which is why calibration is run with random weights
(`GPUSCRIBE_BENCHMARK_ONLY=1`, every window decodes `benchmark_tokens`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from gpuscribe.audio import WINDOW_SAMPLES
from gpuscribe.config import Settings
from gpuscribe.domain import TranscriptionOptions
from gpuscribe.memory.calibration import OCCUPANCY_BEAM
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.engines.batched.slots import SlotAllocator
from gpuscribe.workers.measure import CpuMemory, CudaMemory, DeviceMemory
from gpuscribe.workers.messages import DeviceRef
from gpuscribe.workers.process import prepare_environment

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_SECONDS = 0.005
WINDOWS_PER_TASK = 128  # more windows are given as several tasks at once (one task keeps at
# most the batched engine's IN_FLIGHT windows queued)


@dataclass(frozen=True, slots=True)
class CalibrationJob:
    engine: str
    compute_type: str
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    beam_sizes: tuple[int, ...]
    batch_sizes_of_models: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # (model, the batch sizes to load it at) of batched models

    def batch_sizes_of(self, model: str) -> tuple[int, ...]:
        """The batch sizes a batched model is measured at; () for a model run per task."""
        return dict(self.batch_sizes_of_models).get(model, ())


@dataclass(frozen=True, slots=True)
class CalibrationRow:
    gpu_name: str
    gpu_uuid: str
    engine: str
    model: str
    compute_type: str
    batch_size: int
    beam_size: int
    context_bytes: int
    weights_bytes: int
    working_bytes: int  # peak less what the process held with the model loaded and idle
    # (an occupancy row: the batch's workspace, the peak less context, weights and cache)
    peak_bytes: int  # what the process held at its peak, context included
    seconds: float
    error: str | None = None
    batch_rows: int = 0  # the rows of the model's batch (0: no batch)
    beams: int = 1  # an occupancy row's beams per window (its rows are windows x beams)
    load_bytes: int = 0  # a batch's: what its load added (weights, cache, the pool of its steps)

    @property
    def occupancy(self) -> bool:
        return self.beam_size == OCCUPANCY_BEAM

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Peak:
    """Samples the process's device memory in a thread: NVML's per-process figure catches
    memory the allocator statistics miss (the context, non-PyTorch allocations)."""

    def __init__(self, memory: DeviceMemory) -> None:
        self._memory = memory
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._peak = max(self._peak, self._memory.peak_bytes())

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_SECONDS):
            self._peak = max(self._peak, self._memory.held_bytes())

    @property
    def bytes(self) -> int:
        return self._peak


def calibration_main(
    device: DeviceRef, settings: Settings, job: CalibrationJob, conn: Connection
) -> None:
    """Process target: run the job, send each row as it is measured, then None."""
    prepare_environment(device, os.environ)
    logging.basicConfig(level=logging.INFO, format=f"calibrate[{os.getpid()}] %(message)s")
    try:
        for row in measure(device, settings, job):
            conn.send(row)
    finally:
        conn.send(None)
        conn.close()


def measure(device: DeviceRef, settings: Settings, job: CalibrationJob) -> list[CalibrationRow]:
    from gpuscribe.workers.engines.registry import create_engine

    memory: DeviceMemory = (
        CudaMemory(device.uuid) if device.kind is DeviceKind.CUDA else CpuMemory()
    )
    engine = create_engine(job.engine, settings)
    context = _warm_up(engine, device, memory, job)
    rows: list[CalibrationRow] = []
    for model in job.models:
        sizes = job.batch_sizes_of(model)
        measured = (
            _measure_batches(engine, device, memory, model, job, sizes, context)
            if sizes
            else _measure_tasks(engine, device, memory, model, job, context)
        )
        for row in measured:
            rows.append(row)
            log.info("%s", row)
    return rows


def _measure_tasks(
    engine: Any,
    device: DeviceRef,
    memory: DeviceMemory,
    model: str,
    job: CalibrationJob,
    context: int,
) -> list[CalibrationRow]:
    """The task grid: the model loaded once, each (batch, beam) its peak above the idle model."""
    memory.release_cached()
    before = memory.held_bytes()
    loaded = _load(engine, model, device, job.compute_type, 0)
    memory.release_cached()
    weights = max(0, memory.held_bytes() - before)
    rows = [
        replace(
            _measure_one(device, memory, loaded, model, job, batch, beam, weights),
            context_bytes=context,
        )
        for batch in job.batch_sizes
        for beam in job.beam_sizes
    ]
    loaded.unload()
    return rows


def _measure_batches(
    engine: Any,
    device: DeviceRef,
    memory: DeviceMemory,
    model: str,
    job: CalibrationJob,
    sizes: tuple[int, ...],
    context: int,
) -> list[CalibrationRow]:
    """The model loaded at each batch size, every row in use at each beam size."""
    rows = []
    for size in sizes:
        memory.release_cached()
        before = memory.held_bytes()
        try:
            loaded = _load(engine, model, device, job.compute_type, size)
        except Exception as exc:  # a batch that does not fit is a finding, not a crash
            log.warning("%s at %d rows did not load: %s", model, size, exc)
            rows.append(_failed_load(device, model, job, size, context, exc))
            memory.release_cached()
            continue
        weights = int(loaded.weights_bytes)
        held_idle = context + weights + int(loaded.cache_bytes)
        memory.release_cached()
        load_bytes = max(0, memory.held_bytes() - before)
        for beams in job.beam_sizes:
            windows = _windows_in(loaded, size, beams)
            row = _measure_one(device, memory, loaded, model, job, windows, beams, weights)
            rows.append(
                replace(_as_batch_row(row, size, beams, context, held_idle), load_bytes=load_bytes)
            )
        loaded.unload()
    return rows


def _windows_in(loaded: Any, size: int, beams: int) -> int:
    """The windows of `beams` rows that put every row of a loaded batch of `size` rows in use:
    `size // beams`, or in a pooled cache as many as its slots and rows hold (2.6 times as many
    5-beam windows as rows would hold)."""
    beams = max(1, beams)
    decoder = loaded.decoder
    if decoder.layout is None:
        return max(1, size // beams)
    return max(1, SlotAllocator(decoder.layout, decoder.batch_buckets).fill(beams))


def _as_batch_row(
    row: CalibrationRow, size: int, beams: int, context: int, held_idle: int
) -> CalibrationRow:
    """A task row as the batch's: its size, and its peak less what the idle model held."""
    return replace(
        row, batch_size=size, beam_size=OCCUPANCY_BEAM, beams=beams, batch_rows=size,
        context_bytes=context, working_bytes=max(0, row.peak_bytes - held_idle),
    )  # fmt: skip


def _failed_load(
    device: DeviceRef, model: str, job: CalibrationJob, size: int, context: int, exc: Exception
) -> CalibrationRow:
    return CalibrationRow(
        gpu_name=device.name, gpu_uuid=device.uuid, engine=job.engine, model=model,
        compute_type=job.compute_type, batch_size=size, beam_size=OCCUPANCY_BEAM,
        context_bytes=context, weights_bytes=0, working_bytes=0, peak_bytes=0, seconds=0.0,
        error=f"load: {type(exc).__name__}: {exc}", batch_rows=size,
    )  # fmt: skip


def _load(engine: Any, model: str, device: DeviceRef, compute_type: str, batch_rows: int) -> Any:
    if batch_rows:
        return engine.load(model, device, compute_type, batch_rows=batch_rows)
    return engine.load(model, device, compute_type)


def _warm_up(engine: Any, device: DeviceRef, memory: DeviceMemory, job: CalibrationJob) -> int:
    """Run one window once, so that what the first task of a process leaves behind for good
    (library handles and workspaces) counts as the process's context, not as the first
    model's weights or the first configuration's working memory. Returns that context."""
    first = job.models[0]
    smallest = min(job.batch_sizes_of(first), default=0)
    loaded = _load(engine, first, device, job.compute_type, smallest)
    _measure_one(device, memory, loaded, first, job, 1, 1, 0)
    loaded.unload()
    memory.release_cached()
    return memory.held_bytes()


def _transcribe_in_tasks(
    loaded: Any, audio: np.ndarray[Any, Any], options: TranscriptionOptions
) -> str | None:
    """`options.batch_size` windows at once, in tasks of at most `WINDOWS_PER_TASK` run in
    threads, so that a batch of more rows than one task keeps queued has every row in use.
    The first error, as text: an out-of-memory here is a finding, not a crash."""
    windows = max(1, options.batch_size)
    parts = [
        (audio[first * WINDOW_SAMPLES : (first + size) * WINDOW_SAMPLES], size)
        for first in range(0, windows, WINDOWS_PER_TASK)
        for size in [min(WINDOWS_PER_TASK, windows - first)]
    ]
    errors: list[str] = []

    def run(part: np.ndarray[Any, Any], size: int) -> None:
        try:
            loaded.transcribe(
                part, replace(options, batch_size=size), lambda s, p: None, lambda: False
            )
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=part) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors[0] if errors else None


def _measure_one(
    device: DeviceRef,
    memory: DeviceMemory,
    loaded: Any,
    model: str,
    job: CalibrationJob,
    batch: int,
    beam: int,
    weights: int,
) -> CalibrationRow:
    memory.release_cached()
    baseline = memory.held_bytes()
    rng = np.random.default_rng(batch * 100 + beam)
    audio = (rng.standard_normal(batch * WINDOW_SAMPLES) * 0.1).astype(np.float32)
    options = TranscriptionOptions(
        model=model, engine=job.engine, compute_type=job.compute_type,
        batch_size=batch, beam_size=beam, language="en",
    )  # fmt: skip
    started = time.perf_counter()
    with _Peak(memory) as peak:
        error = _transcribe_in_tasks(loaded, audio, options)
    return CalibrationRow(
        gpu_name=device.name, gpu_uuid=device.uuid, engine=job.engine, model=model,
        compute_type=job.compute_type, batch_size=batch, beam_size=beam,
        context_bytes=memory.context_bytes, weights_bytes=weights,
        working_bytes=max(0, peak.bytes - baseline), peak_bytes=peak.bytes,
        seconds=time.perf_counter() - started, error=error,
    )  # fmt: skip
