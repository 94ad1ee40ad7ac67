"""How fast several nodes place one PostgreSQL queue: N node processes, each running the real
scheduling pass (queue windows, planner, estimator, ledgers, one claim transaction per task)
over simulated GPUs, against one queue of queued tasks, until every task is claimed.

Workers only take the claims (no task runs), and each node has room for the whole queue, so the
figure is the claim path's: each pass locks a window of the oldest queued tasks that no other
node holds (FOR UPDATE SKIP LOCKED), plans it and claims what fits, in one transaction.

    python -m gpuscribe.bench.claims --store postgresql://... [--nodes 3] [--tasks 10000]

The database should be empty (a fresh database or schema): the benchmark adds the tasks.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gpuscribe.config import Settings
from gpuscribe.domain import NewTask, Priority, TranscriptionOptions
from gpuscribe.memory.types import ModelKey
from gpuscribe.workers.messages import DeviceRef, RunTask

GPU_SPEC = "64x80GiB:NVIDIA H200"
SEED_THREADS = 16  # submissions at once, as API nodes under load make them
TASK_OPTIONS = TranscriptionOptions(model="tiny.en", engine="transformers", compute_type="float16")


@dataclass(frozen=True, slots=True)
class NodeFigures:
    name: str
    claimed: int
    lost: int  # claims another node won first
    passes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class ClaimBench:
    nodes: int
    tasks: int
    seed_seconds: float  # adding the tasks, one transaction each, from SEED_THREADS threads
    seconds: float  # first pass of any node to the last claim
    placements_per_second: float
    lost_claims: int
    per_node: list[NodeFigures]


class _ClaimOnly:
    """A worker that takes its tasks and never runs them: the benchmark measures claims."""

    def __init__(self, device: DeviceRef) -> None:
        self.device = device

    def start(self) -> None:
        pass

    def run(self, command: RunTask) -> None:
        pass

    def cancel(self, task_id: str) -> None:
        pass

    def unload(self, model: ModelKey) -> None:
        pass

    def kill_task(self, task_id: str) -> None:
        pass

    def alive(self) -> bool:
        return True

    def pids(self) -> set[int]:
        return set()

    def stop(self, timeout: float = 10.0) -> None:
        pass


def _node(url: str, name: str, spec: str, start_at: float, conn: Connection) -> None:
    from gpuscribe.node.parts import build_parts
    from gpuscribe.store.audio import LocalAudioStore
    from gpuscribe.store.postgres import PostgresStore
    from gpuscribe.telemetry.simulated import SimulatedGpus

    settings = Settings(node_name=name, store=url, max_tasks_per_gpu=1000, simulate_gpus=spec)
    store = PostgresStore(url, pool_size=2)
    lost = 0
    claim = store.claim

    def counting_claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal lost
        found = claim(*args, **kwargs)
        lost += found is None
        return found

    store.claim = counting_claim  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as audio_dir:
        parts = build_parts(
            settings, store, SimulatedGpus(spec), clock=time.time, wake=lambda: None,
            worker_factory=lambda device, *_: _ClaimOnly(device),
            audio=LocalAudioStore(Path(audio_dir)),
        )  # fmt: skip
        for slot in parts.context.slots.values():
            slot.ready = True
        time.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        claimed = passes = 0
        while True:
            placed = parts.scheduler.run_once()
            passes += 1
            claimed += placed
            if placed == 0 and store.count_queued() == 0:
                break
        seconds = time.perf_counter() - started
    store.close()
    conn.send(NodeFigures(name, claimed, lost, passes, seconds))
    conn.close()


def cluster_claim_rate(
    url: str, *, nodes: int = 3, tasks: int = 10_000, spec: str = GPU_SPEC
) -> ClaimBench:
    """Add `tasks` queued tasks to the (empty) store at `url`, then let `nodes` node processes
    claim them all at once; the placements per second of the whole cluster."""
    from gpuscribe.store.postgres import PostgresStore

    store = PostgresStore(url, pool_size=SEED_THREADS)

    def add(i: int) -> None:
        new = NewTask(Priority.NORMAL, TASK_OPTIONS, f"bench/{i}.wav", 60.0, "wav")
        store.add(new, now=time.time())

    seed_started = time.perf_counter()
    with ThreadPoolExecutor(SEED_THREADS) as pool:
        list(pool.map(add, range(tasks)))
    seed_seconds = time.perf_counter() - seed_started
    store.close()

    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 5.0  # every process has imported and opened its store by then
    pipes, procs = [], []
    for n in range(nodes):
        ours, theirs = context.Pipe(duplex=False)
        proc = context.Process(target=_node, args=(url, f"bench-{n}", spec, start_at, theirs))
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    figures: list[NodeFigures] = [pipe.recv() for pipe in pipes]
    for proc in procs:
        proc.join()
    seconds = max(f.seconds for f in figures)
    claimed = sum(f.claimed for f in figures)
    return ClaimBench(
        nodes=nodes,
        tasks=tasks,
        seed_seconds=seed_seconds,
        seconds=seconds,
        placements_per_second=claimed / seconds if seconds > 0 else 0.0,
        lost_claims=sum(f.lost for f in figures),
        per_node=figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="postgresql://... (an empty database)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--gpus", default=GPU_SPEC, help=f"simulated GPUs per node ({GPU_SPEC})")
    args = parser.parse_args()
    bench = cluster_claim_rate(args.store, nodes=args.nodes, tasks=args.tasks, spec=args.gpus)
    from gpuscribe.cli.output import show

    show(json.dumps(asdict(bench), indent=2))


if __name__ == "__main__":
    main()
