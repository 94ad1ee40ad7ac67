"""Measuring, inside a worker process on one device, what each model really holds.

For each model: the context (NVML's figure for this process, before any model), the weights (what
the process holds after loading, less before), and for each (batch size, beam size) the peak while
transcribing `batch_size` 30 s windows at once, less what it held before. Random-weight models
decode the full 224 tokens per window (the worst case), so the peak is the most a task can take.

A batched model (the transformers engine on a GPU: the job names its rows) is loaded with the
rows the scheduler would give it, and instead of the task grid its batch is measured at several
occupancies (`memory.batch.occupancy_levels`): that many one-row windows (greedy) submitted at
once, the peak less the context, the weights and the cache being the batch's workspace at that
occupancy. Those rows carry `beam_size` 0 (`OCCUPANCY_BEAM`) and the rows in use as
`batch_size`; stored, they are what the estimator fits (`memory.batch.fit_workspace`). The rows in
use are those asked for: windows that end early (a real model on noise) make them fewer, which is
why calibration is run with random weights (`GPUSCRIBE_BENCHMARK_ONLY=1`, every window decodes
`benchmark_tokens`).
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
from gpuscribe.memory.batch import occupancy_levels
from gpuscribe.memory.calibration import OCCUPANCY_BEAM
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.measure import CpuMemory, CudaMemory, DeviceMemory
from gpuscribe.workers.messages import DeviceRef
from gpuscribe.workers.process import prepare_environment

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class CalibrationJob:
    engine: str
    compute_type: str
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    beam_sizes: tuple[int, ...]
    batch_rows: tuple[tuple[str, int], ...] = ()  # (model, rows) of batched models

    def rows_of(self, model: str) -> int:
        return dict(self.batch_rows).get(model, 0)


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
        memory.release_cached()
        before = memory.held_bytes()
        batch_rows = job.rows_of(model)
        loaded = _load(engine, model, device, job.compute_type, batch_rows)
        memory.release_cached()
        cache = int(getattr(loaded, "cache_bytes", 0))  # a batch's cache is not weights
        weights = max(0, memory.held_bytes() - before - cache)
        if batch_rows:
            for level in occupancy_levels(batch_rows):
                row = _measure_occupancy(
                    device, memory, loaded, model, job, level, context + weights + cache
                )
                rows.append(
                    replace(
                        row, context_bytes=context, weights_bytes=weights, batch_rows=batch_rows
                    )
                )
                log.info("%s", rows[-1])
        else:
            for batch in job.batch_sizes:
                for beam in job.beam_sizes:
                    row = _measure_one(device, memory, loaded, model, job, batch, beam, weights)
                    rows.append(replace(row, context_bytes=context))
                    log.info("%s", rows[-1])
        loaded.unload()
    return rows


def _load(engine: Any, model: str, device: DeviceRef, compute_type: str, batch_rows: int) -> Any:
    if batch_rows:
        return engine.load(model, device, compute_type, batch_rows=batch_rows)
    return engine.load(model, device, compute_type)


def _warm_up(engine: Any, device: DeviceRef, memory: DeviceMemory, job: CalibrationJob) -> int:
    """Run one window once, so that what the first task of a process leaves behind for good
    (library handles and workspaces) counts as the process's context, not as the first
    model's weights or the first configuration's working memory. Returns that context."""
    loaded = _load(engine, job.models[0], device, job.compute_type, job.rows_of(job.models[0]))
    _measure_one(device, memory, loaded, job.models[0], job, 1, 1, 0)
    loaded.unload()
    memory.release_cached()
    return memory.held_bytes()


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
    error = None
    with _Peak(memory) as peak:
        try:
            loaded.transcribe(audio, options, lambda s, p: None, lambda: False)
        except Exception as exc:  # an OOM here is a finding, not a crash
            error = f"{type(exc).__name__}: {exc}"
    return CalibrationRow(
        gpu_name=device.name, gpu_uuid=device.uuid, engine=job.engine, model=model,
        compute_type=job.compute_type, batch_size=batch, beam_size=beam,
        context_bytes=memory.context_bytes, weights_bytes=weights,
        working_bytes=max(0, peak.bytes - baseline), peak_bytes=peak.bytes,
        seconds=time.perf_counter() - started, error=error,
    )  # fmt: skip


def _measure_occupancy(
    device: DeviceRef,
    memory: DeviceMemory,
    loaded: Any,
    model: str,
    job: CalibrationJob,
    rows_in_use: int,
    held_idle: int,
) -> CalibrationRow:
    """The batch's peak with `rows_in_use` greedy windows submitted at once; its workspace is
    the peak less `held_idle` (context, weights and cache)."""
    row = _measure_one(device, memory, loaded, model, job, rows_in_use, 1, 0)
    return replace(
        row,
        beam_size=OCCUPANCY_BEAM,
        working_bytes=max(0, row.peak_bytes - held_idle),
    )
