"""Does a cluster lose throughput to its database? The same stream of simulated tasks through
one node of 4 simulated GPUs, then through 2 nodes of 2, each node a process of its own on one
PostgreSQL store; audio seconds completed per second of each layout.

    python -m gpuscribe.bench.cluster --store postgresql://... [--tasks 400]

The database should be empty: each layout runs in a schema of its own, created and dropped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

from gpuscribe.domain import NewTask, Priority, TaskState, TranscriptionOptions

OPTIONS = TranscriptionOptions(model="tiny.en", engine="transformers", compute_type="float16")
SPEED = 60.0  # simulated audio seconds per second: a 60 s clip holds its GPU for 1 s


@dataclass(frozen=True, slots=True)
class LayoutFigures:
    nodes: int
    gpus_per_node: int
    tasks: int
    audio_seconds: float
    seconds: float
    audio_seconds_per_second: float


@dataclass(frozen=True, slots=True)
class ClusterBench:
    one_node: LayoutFigures
    two_nodes: LayoutFigures
    ratio: float  # two nodes x 2 GPUs against one node x 4 GPUs (target >= 0.9)


def _node(url: str, name: str, gpus: int, data_dir: str, stop: Event) -> None:
    from gpuscribe.config import load_settings
    from gpuscribe.node.cluster import Role
    from gpuscribe.node.node import Node
    from gpuscribe.telemetry.simulated import SimulatedGpus

    flags = {
        "store": url, "node_name": name, "data_dir": data_dir, "simulation_speed": SPEED,
        "simulate_gpus": f"{gpus}x80GiB:NVIDIA H200", "heartbeat_seconds": 1.0,
        "scheduler_interval_seconds": 0.05,
    }  # fmt: skip
    settings = load_settings(flags=flags, env={})
    node = Node(settings, telemetry=SimulatedGpus(settings.simulate_gpus), role=Role.WORKER)
    node.start()
    stop.wait()
    node.stop()


def _layout(url: str, nodes: int, gpus: int, clips: list[float]) -> LayoutFigures:
    import psycopg

    from gpuscribe.store.postgres import PostgresStore

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    try:
        store = PostgresStore(scoped)
        with tempfile.TemporaryDirectory() as root:
            procs = [
                context.Process(
                    target=_node, args=(scoped, f"n{i}", gpus, str(Path(root) / f"n{i}"), stop)
                )
                for i in range(nodes)
            ]
            for proc in procs:
                proc.start()
            deadline = time.monotonic() + 120.0
            while sum(len(n.devices) for n in store.nodes(now=time.time())) < nodes * gpus:
                if time.monotonic() > deadline:
                    raise RuntimeError("the nodes did not come up within 120 s")
                time.sleep(0.2)
            time.sleep(1.0)  # their workers report ready
            started = time.perf_counter()
            for seconds in clips:
                new = NewTask(Priority.NORMAL, OPTIONS, "pgaudio:none", seconds, "wav")
                store.add(new, now=time.time())
            deadline = time.monotonic() + 600.0
            while (done := store.counts().by_state)[TaskState.COMPLETED.value] < len(clips):
                if done[TaskState.FAILED.value] or time.monotonic() > deadline:
                    raise RuntimeError(f"the stream did not complete: {done}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            stop.set()
            for proc in procs:
                proc.join(timeout=30)
        store.close()
    finally:
        stop.set()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    total = sum(clips)
    return LayoutFigures(nodes, gpus, len(clips), total, elapsed, total / elapsed)


def cluster_throughput(url: str, *, tasks: int = 400, seed: int = 0) -> ClusterBench:
    rng = random.Random(seed)
    clips = [round(rng.uniform(10.0, 120.0), 1) for _ in range(tasks)]
    one = _layout(url, 1, 4, clips)
    two = _layout(url, 2, 2, clips)
    return ClusterBench(one, two, two.audio_seconds_per_second / one.audio_seconds_per_second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="postgresql://... (an empty database)")
    parser.add_argument("--tasks", type=int, default=400)
    args = parser.parse_args()
    from gpuscribe.cli.output import show

    show(json.dumps(asdict(cluster_throughput(args.store, tasks=args.tasks)), indent=2))


if __name__ == "__main__":
    main()
