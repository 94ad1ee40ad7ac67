"""`gpuscribe estimate`: the memory estimate of one kind of task, computed here, no server."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuscribe.cli import CommandError
from gpuscribe.cli.args import positive_int
from gpuscribe.cli.commands_server import LOCAL_FLAGS, add_settings_flags, settings_from_args
from gpuscribe.cli.output import show
from gpuscribe.cli.tables import gib, to_json
from gpuscribe.config import Settings
from gpuscribe.memory.architectures import canonical_model_name, known_model_names
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.types import GIB, MemoryEstimate, ProfileKey
from gpuscribe.node.estimates import estimator_for
from gpuscribe.telemetry.base import DeviceKind

log = logging.getLogger(__name__)

SOURCE_TEXT = {
    "prior": "prior: the design's table and factors (nothing measured for this key)",
    "profile": "profile: measured on this GPU model, shipped with gpuscribe",
    "calibrated": "calibrated: measured on this deployment",
}


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    kind: DeviceKind
    total_bytes: int | None = None  # its memory, where known: a batched model's rows follow


def local_device(
    settings: Settings, gpu_name: str | None, gpu_memory_gib: float | None = None
) -> Device:
    """The named GPU model (of `gpu_memory_gib`, where given), else the first device this
    machine has (NVML, simulated or CPU)."""
    total = None if gpu_memory_gib is None else int(gpu_memory_gib * GIB)
    if gpu_name:
        kind = DeviceKind.CPU if gpu_name.strip().upper().startswith("CPU") else DeviceKind.CUDA
        return Device(gpu_name, kind, total)
    from gpuscribe.telemetry.detect import open_telemetry

    telemetry = open_telemetry(settings)
    try:
        first = telemetry.discover()[0]
    finally:
        telemetry.close()
    return Device(first.name, first.kind, total or first.memory_total_bytes)


def load_book(settings: Settings) -> CalibrationBook:
    """Calibration samples of the store at `settings.store_url`, if there is one already."""
    book = CalibrationBook(settings.calibration_sample_size, settings.memory_confidence_factor)
    url = settings.store_url
    if url.startswith("sqlite:///"):
        from gpuscribe.store.open import sqlite_path

        if not Path(sqlite_path(url)).is_file():
            return book
    from gpuscribe.store.open import open_store

    store = open_store(url)
    try:
        book.load(store.all_samples(per_key_limit=settings.calibration_sample_size))
    finally:
        store.close()
    return book


def estimate_for(
    args: argparse.Namespace, settings: Settings
) -> tuple[ProfileKey, Device, MemoryEstimate]:
    device = local_device(settings, args.gpu_name, getattr(args, "gpu_memory", None))
    default_engine = "transformers" if device.kind is DeviceKind.CUDA else "faster-whisper"
    model = args.model or settings.default_model
    canonical = canonical_model_name(model)
    if canonical is None:
        known = ", ".join(known_model_names())
        raise CommandError(f"unknown model {model!r} (--model): known models are {known}")
    key = ProfileKey(
        gpu_name=device.name,
        engine=args.engine or settings.default_engine or default_engine,
        model=canonical,
        compute_type=args.compute_type,
        batch_size=args.batch_size,
        beam_size=args.beam_size,
    )
    estimator = estimator_for(settings, load_book(settings))
    estimate = estimator.estimate(
        key, args.audio_seconds, device_kind=device.kind, total_bytes=device.total_bytes
    )
    return key, device, estimate


def estimate_json(key: ProfileKey, device: Device, estimate: MemoryEstimate) -> dict[str, Any]:
    return {
        "model": key.model,
        "engine": key.engine,
        "compute_type": key.compute_type,
        "batch_size": key.batch_size,
        "beam_size": key.beam_size,
        "gpu_name": key.gpu_name,
        "device_kind": device.kind.value,
        "weights_bytes": estimate.weights_bytes,
        "batch_bytes": estimate.batch_bytes,
        "batch_rows": estimate.batch_rows,
        "working_bytes": estimate.working_bytes,
        "context_bytes": estimate.context_bytes,
        "total_bytes": estimate.total_bytes,
        "source": estimate.source.value,
        "sample_count": estimate.sample_count,
    }


def estimate_text(data: dict[str, Any]) -> str:
    head = (
        f"{data['model']} ({data['engine']}, {data['compute_type']}, batch {data['batch_size']}, "
        f"beam {data['beam_size']}) on {data['gpu_name']}"
    )
    lines = [
        head,
        f"  weights   {gib(data['weights_bytes'], 2):>8} GiB  once per device per model",
        *(
            [
                f"  batch     {gib(data['batch_bytes'], 2):>8} GiB  once per device per model: "
                f"{data['batch_rows']} rows of cache, and workspace"
            ]
            if data.get("batch_rows")
            else []
        ),
        f"  working   {gib(data['working_bytes'], 2):>8} GiB  per running task",
        f"  context   {gib(data['context_bytes'], 2):>8} GiB  once per worker process "
        f"({'its own memory beyond the weights' if data['device_kind'] == 'cpu' else 'CUDA'})",
        f"  total     {gib(data['total_bytes'], 2):>8} GiB  the worker's peak for one task",
        f"source: {SOURCE_TEXT.get(data['source'], data['source'])}",
    ]
    if data["sample_count"]:
        lines[-1] += f", {data['sample_count']} samples"
    return "\n".join(lines)


def cmd_estimate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    data = estimate_json(*estimate_for(args, settings))
    show(to_json(data) if args.json else estimate_text(data))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "estimate",
        help="the memory one task will need, computed here (no server)",
        description="Estimate what a worker process will hold on a GPU at its peak for one task: "
        "model weights, working memory, CUDA context. Uses calibration samples from the local "
        "store (--store / --data-dir) when it exists, else a shipped profile, else the prior.",
    )
    p.add_argument("--model", help="model name (default: the default model, tiny.en)")
    p.add_argument(
        "--engine",
        choices=["faster-whisper", "transformers"],
        help="engine (default: transformers on GPUs, faster-whisper on the CPU)",
    )
    p.add_argument(
        "--compute-type",
        default="default",
        metavar="TYPE",
        help="float16, int8_float16, float32, ... (default: the engine's default)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=1, metavar="N", help="batch size (default 1)"
    )
    p.add_argument(
        "--beam-size", type=positive_int, default=5, metavar="N", help="beam width (default 5)"
    )
    p.add_argument(
        "--gpu-name",
        metavar="NAME",
        help="GPU model as NVML names it, e.g. 'NVIDIA H100 80GB HBM3' "
        "(default: this machine's first device)",
    )
    p.add_argument(
        "--gpu-memory",
        type=float,
        metavar="GIB",
        help="the GPU's memory in GiB, which decides the transformers engine's batch rows "
        "(default: this machine's first device's; without either, GPUSCRIBE_BATCH_ROWS or 256)",
    )
    p.add_argument(
        "--audio-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="audio length, used by the prior (default 60)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print weights_bytes, batch_bytes, batch_rows, working_bytes, context_bytes, "
        "total_bytes, source",
    )
    add_settings_flags(p, LOCAL_FLAGS)
    p.set_defaults(handler=cmd_estimate)
