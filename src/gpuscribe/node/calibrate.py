"""`gpuscribe calibrate`: measure real peaks on the local devices, store them as calibration
samples, and optionally write them as a profile to ship for that GPU model.

Each device runs its share of the models in a process of its own (the caller never creates a
CUDA context). Devices of one GPU model split the models between them, so four GPUs measure a
grid about four times faster.

With the transformers engine on GPUs each model runs as one batch: instead of the task grid it
is loaded at several batch sizes up to the rows the scheduler would give it on this GPU
(`batch_rows_for`: the formula's rows, before any calibration), every row in use at each beam
size of the grid (`workers/calibrate.py`); the stored samples are fitted by the estimator.
`batch_sizes` of `run_calibration` names other sizes (the validation of a profile).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpuscribe.config import ConfigError, Settings
from gpuscribe.domain import InvalidRequest
from gpuscribe.memory.batch import OccupancySample, calibration_rows, fit_workspace
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.profiles import PROFILE_FORMAT
from gpuscribe.memory.types import CalibrationSample, ProfileKey
from gpuscribe.node.devices import select_devices
from gpuscribe.node.estimates import estimator_for
from gpuscribe.store.open import open_store
from gpuscribe.telemetry.base import DeviceKind, DeviceReading
from gpuscribe.telemetry.detect import open_telemetry
from gpuscribe.workers.calibrate import CalibrationJob, CalibrationRow, calibration_main
from gpuscribe.workers.messages import DeviceRef
from gpuscribe.workers.models import resolve_model

log = logging.getLogger(__name__)


def run_calibration(
    settings: Settings,
    models: Sequence[str],
    batch_sizes: Sequence[int],
    beam_sizes: Sequence[int],
    *,
    export_profile: str | None = None,
    batch_sizes_of_models: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Measure `models` on the local devices. A model that runs as a batch there is measured at
    `batch_sizes_of_models` rows when given, otherwise at `calibration_rows` of its rows."""
    devices = calibration_devices(settings)
    engine = settings.default_engine or (
        "transformers" if devices[0].kind is DeviceKind.CUDA else "faster-whisper"
    )
    compute_type = "float16" if devices[0].kind is DeviceKind.CUDA else "default"
    names = [_available(settings, m, engine, devices[0]) for m in models]
    batch_rows = batch_rows_for(settings, devices[0], engine, compute_type, names)
    sizes = tuple(
        (m, tuple(batch_sizes_of_models) if batch_sizes_of_models else calibration_rows(r))
        for m, r in batch_rows
    )
    if sizes:
        log.info(
            "batched models: measuring their batch at several sizes, every row in use (rows: "
            "%s), not the batch/beam grid",
            "; ".join(f"{m} {', '.join(map(str, s))}" for m, s in sizes),
        )
    jobs = _split_jobs(
        devices, names, engine, compute_type, batch_sizes, beam_sizes, batch_sizes_of_models=sizes
    )
    rows = _run_jobs(settings, jobs)
    if not any(r.error is None for r in rows):
        reasons = sorted({r.error for r in rows if r.error}) or [
            "the calibration process ended without measuring (see the log above)"
        ]
        raise CalibrationFailed(f"nothing was measured: {'; '.join(reasons)}")
    _store_samples(settings, rows)
    if export_profile:
        Path(export_profile).write_text(json.dumps(profile_from_rows(rows), indent=1) + "\n")
        log.info("wrote profile %s", export_profile)
    return [r.to_dict() for r in rows]


class CalibrationFailed(Exception):
    """Nothing could be measured: the message says why."""


def _available(settings: Settings, model: str, engine: str, device: DeviceReading) -> str:
    """The canonical name of a model calibration can load here; ConfigError naming --model
    otherwise (before any process starts)."""
    try:
        return resolve_model(
            model,
            engine,
            models_dir=settings.models_dir,
            allow_downloads=settings.allow_downloads,
            benchmark_only=settings.benchmark_only,
        ).name
    except InvalidRequest as exc:
        hint = ""
        if exc.code == "model_not_found":
            hint = f"; fetch it with `gpuscribe models pull {model} --engine {engine}`"
            if device.kind is DeviceKind.CPU:
                hint += (
                    " (on the CPU, calibration measures the worker's memory, not a GPU's: "
                    "GPU figures come from a GPU machine)"
                )
        raise ConfigError(
            f"cannot calibrate --model {model} with {engine} on {device.name}: {exc.message}{hint}"
        ) from exc


def calibration_devices(settings: Settings) -> list[DeviceReading]:
    """The devices calibration runs on, read through NVML (no CUDA context here): the selected
    GPUs, or the first device where there is none."""
    telemetry = open_telemetry(settings)
    try:
        found = select_devices(telemetry.discover(), settings.devices)
    finally:
        telemetry.close()
    cuda = [d for d in found if d.kind is DeviceKind.CUDA]
    return cuda or found[:1]


def batch_rows_for(
    settings: Settings,
    device: DeviceReading,
    engine: str,
    compute_type: str,
    models: Sequence[str],
) -> tuple[tuple[str, int], ...]:
    """(model, rows) for the models that run as a batch on this device (none elsewhere): the
    rows a node's scheduler gives them on it before any calibration."""
    book = CalibrationBook(settings.calibration_sample_size, settings.memory_confidence_factor)
    estimator = estimator_for(settings, book)
    found = []
    for model in models:
        key = ProfileKey(device.name, engine, model, compute_type, 1, 1)
        estimate = estimator.estimate(
            key, 30.0, device_kind=device.kind, total_bytes=device.memory_total_bytes
        )
        if estimate.batch_rows:
            found.append((model, estimate.batch_rows))
    return tuple(found)


def _split_jobs(
    devices: Sequence[DeviceReading],
    models: Sequence[str],
    engine: str,
    compute_type: str,
    batch_sizes: Sequence[int],
    beam_sizes: Sequence[int],
    *,
    batch_sizes_of_models: Sequence[tuple[str, tuple[int, ...]]] = (),
) -> list[tuple[DeviceReading, CalibrationJob]]:
    """Round-robin the models over the devices of the first device's GPU model."""
    same = [d for d in devices if d.name == devices[0].name]
    shares: list[list[str]] = [[] for _ in same]
    for i, model in enumerate(models):
        shares[i % len(same)].append(model)
    return [
        (device, CalibrationJob(engine, compute_type, tuple(share), tuple(batch_sizes),
                                tuple(beam_sizes),
                                tuple((m, r) for m, r in batch_sizes_of_models if m in share)))
        for device, share in zip(same, shares, strict=True)
        if share
    ]  # fmt: skip


def _run_jobs(
    settings: Settings, jobs: Sequence[tuple[DeviceReading, CalibrationJob]]
) -> list[CalibrationRow]:
    ctx = multiprocessing.get_context("spawn")
    running = []
    for reading, job in jobs:
        parent, child = ctx.Pipe(duplex=False)
        device = DeviceRef(reading.kind, reading.uuid, reading.index, reading.name)
        process = ctx.Process(target=calibration_main, args=(device, settings, job, child))
        process.start()
        child.close()
        running.append((process, parent))
    rows: list[CalibrationRow] = []
    for process, conn in running:
        rows.extend(_collect(conn))
        process.join()
        if process.exitcode != 0:
            log.error("calibration process %d exited with %s", process.pid, process.exitcode)
    return rows


def _collect(conn: Any) -> list[CalibrationRow]:
    rows: list[CalibrationRow] = []
    while True:
        try:
            row = conn.recv()
        except EOFError:
            return rows
        if row is None:
            return rows
        rows.append(row)


def _store_samples(settings: Settings, rows: Sequence[CalibrationRow]) -> None:
    store = open_store(settings.store_url)
    try:
        for row in rows:
            if row.error is None:
                store.add_sample(sample_from_row(row, measured_at=time.time()))
    finally:
        store.close()


def sample_from_row(row: CalibrationRow, *, measured_at: float) -> CalibrationSample:
    key = ProfileKey(
        row.gpu_name, row.engine, row.model, row.compute_type, row.batch_size, row.beam_size
    )
    return CalibrationSample(
        key=key,
        working_bytes=row.working_bytes,
        weights_bytes=row.weights_bytes,
        context_bytes=row.context_bytes,
        measured_at=measured_at,
    )


def profile_from_rows(rows: Sequence[CalibrationRow]) -> dict[str, Any]:
    """The rows as a shipped profile (`memory/profiles/*.json`): per model its weights and its
    working memory at each measured (batch, beam); a batched model's rows as its `batch` (the
    largest size measured, the workspace at each size and beam count, and their fit)."""
    good = [r for r in rows if r.error is None]
    if not good:
        raise ValueError("no successful measurement to make a profile of")
    models: dict[str, dict[str, Any]] = {}
    for row in sorted(good, key=lambda r: (r.model, r.beam_size, r.batch_size, r.beams)):
        entry = models.setdefault(row.model, {"weights_bytes": row.weights_bytes, "points": []})
        if row.occupancy:
            batch = entry.setdefault("batch", {"rows": row.batch_rows, "points": []})
            batch["rows"] = max(batch["rows"], row.batch_rows)
            batch["points"].append(
                {"rows_in_use": row.batch_size, "beams": row.beams,
                 "workspace_bytes": row.working_bytes}
            )  # fmt: skip
            continue
        entry["points"].append(
            {"batch_size": row.batch_size, "beam_size": row.beam_size,
             "working_bytes": row.working_bytes}
        )  # fmt: skip
    for entry in models.values():
        batch = entry.get("batch")
        fit = batch and fit_workspace(
            [OccupancySample(p["rows_in_use"], p["workspace_bytes"]) for p in batch["points"]]
        )
        if batch and fit:
            batch["fit"] = {"fixed_bytes": fit.fixed_bytes, "per_row_bytes": fit.per_row_bytes}
    return {
        "format": PROFILE_FORMAT,
        "gpu_name_contains": good[0].gpu_name,
        "engine": good[0].engine,
        "compute_types": sorted({good[0].compute_type, "default"}),
        "context_bytes": max(r.context_bytes for r in good),
        "note": "measured by gpuscribe calibrate: working = peak held less what the process "
        "held with the model loaded and idle; a batch's workspace = peak held less the context, "
        "the parameters and the cache, every row of the batch in use; random weights decode "
        "224 tokens per window",
        "models": models,
    }
