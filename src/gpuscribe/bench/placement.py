"""How fast one scheduling pass places a large queue: 10,000 tasks over 64 simulated 80 GiB
devices, with the real estimator (shipped H200 profile) and real ledgers."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from gpuscribe.domain import Priority, Task, TaskState, TranscriptionOptions
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.estimator import Estimator, profile_key_for
from gpuscribe.memory.ledger import DeviceLedger
from gpuscribe.memory.profiles import REFERENCE_CONTEXT_BYTES, ProfileBook
from gpuscribe.memory.types import GIB, MemoryEstimate
from gpuscribe.scheduling.planner import DeviceState, plan
from gpuscribe.telemetry.base import DeviceKind

DEVICE_NAME = "NVIDIA H200"
DEVICE_BYTES = 80 * GIB
# (model, beam size): a mix in which 10,000 tasks fit on 64 devices of 80 GiB.
MIX = (("tiny.en", 5), ("base", 5), ("small", 1), ("medium", 1), ("large-v3", 1), ("turbo", 5))


@dataclass(frozen=True, slots=True)
class PlacementBench:
    placements_per_second: float
    placements: int
    seconds: float


def _tasks(count: int, rng: random.Random) -> list[Task]:
    tasks = []
    for i in range(count):
        model, beams = rng.choice(MIX)
        options = TranscriptionOptions(model=model, engine="transformers", beam_size=beams)
        tasks.append(
            Task(
                id=f"task-{i:06d}",
                state=TaskState.QUEUED,
                priority=rng.choice(list(Priority)),
                options=options,
                audio_path=f"audio/{i}.wav",
                audio_seconds=round(rng.uniform(5.0, 3600.0), 1),
                audio_format="wav",
                created_at=rng.uniform(0.0, 600.0),
            )
        )
    return tasks


def _devices(count: int, max_tasks: int) -> list[DeviceState]:
    return [
        DeviceState(
            ledger=DeviceLedger(
                f"SIM-{i:04d}",
                i,
                DEVICE_BYTES,
                cap_fraction=0.9,
                reserve_bytes=GIB,
                max_tasks=max_tasks,
            ),
            name=DEVICE_NAME,
            kind=DeviceKind.SIMULATED,
            foreign_bytes=0,
            healthy=True,
        )
        for i in range(count)
    ]


def placement_throughput(
    *, tasks: int = 10_000, devices: int = 64, seed: int = 0
) -> PlacementBench:
    rng = random.Random(seed)
    queue = _tasks(tasks, rng)
    states = _devices(devices, max_tasks=tasks)
    estimator = Estimator(
        CalibrationBook(50, 1.2),
        ProfileBook(),
        confidence_factor=1.2,
        cuda_context_bytes=REFERENCE_CONTEXT_BYTES,
    )

    def estimate_for(task: Task, device: DeviceState) -> MemoryEstimate:
        key = profile_key_for(task.options, device.name)
        return estimator.estimate(key, task.audio_seconds, device_kind=device.kind)

    started = time.perf_counter()
    result = plan(
        queue, states, estimate_for, now=600.0, aging_seconds=120.0, starvation_seconds=300.0
    )
    seconds = time.perf_counter() - started
    placed = len(result.placements)
    return PlacementBench(placed / seconds if seconds > 0 else 0.0, placed, seconds)
