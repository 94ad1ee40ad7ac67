"""Where a submission's time goes: `submissions.py`'s load against a service whose submission
path is timed stage by stage, in-process (wall and thread CPU per call), with the process's CPU.

    .venv/bin/python benchmarks/submission_stages.py                 # 1000 submissions
    .venv/bin/python benchmarks/submission_stages.py --submissions 3000

It starts `gpuscribe serve` on simulated GPUs (as `submissions.py` does) through this file, which
wraps the stages below before the service imports them, sends a warm-up and the load, stops the
service and prints, per stage: calls, wall and thread-CPU milliseconds per call. Stages that do
not exist in the code under test are skipped, so the same command times older commits (run it
with PYTHONPATH pointing at their `src`). The timers cost a few microseconds a call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submissions import _free_port, run_load, small_wav

# (module, attribute path, label): the submission path, outermost first.
STAGES = [
    ("gpuscribe.api.routes_tasks", "_submit", "the blocking call (form, audio, commit)"),
    ("gpuscribe.api.routes_tasks", "task_submission", "form fields checked"),
    ("gpuscribe.api.routes_tasks", "submit_audio", "audio checked + task committed"),
    ("gpuscribe.api.routes_tasks", "receive", "receive (event loop, wall only)"),
    ("gpuscribe.api.uploads", "_stream", "multipart streaming (event loop, wall only)"),
    ("gpuscribe.api.uploads", "_open_temp", "temp file opened (own thread trip)"),
    ("gpuscribe.api.uploads", "_append", "temp file written (own thread trip)"),
    ("gpuscribe.api.uploads", "_finish_file", "temp file fsync'ed (own thread trip)"),
    ("gpuscribe.api.uploads", "_TempFile.finish", "temp file written + fsync'ed"),
    ("gpuscribe.api.uploads", "check_audio", "audio: probe, rename, dir fsync"),
    ("gpuscribe.api.uploads", "_probe", "probe"),
    ("gpuscribe.api.uploads", "_fsync_dir", "directory fsync"),
    ("gpuscribe.api.submission", "_submit", "the blocking call (form, audio, commit)"),
    ("gpuscribe.api.submission", "receive", "receive (event loop, wall only)"),
    ("gpuscribe.api.staging", "StagedUpload.flush", "temp file written (own thread trip)"),
    ("gpuscribe.api.staging", "StagedUpload.finish", "temp file written + fsync'ed"),
    ("gpuscribe.api.submission", "probe_upload", "probe"),
    ("gpuscribe.api.staging", "StagedUpload.place", "rename + directory fsync"),
    ("gpuscribe.api.staging", "_fsync_dir", "directory fsync"),
    ("gpuscribe.node.node", "Node.submit", "Node.submit"),
    ("gpuscribe.store.sqlbase", "SqlTaskStore.add", "store.add (durable commit)"),
    ("gpuscribe.store.sqlbase", "SqlTaskStore.task_by_key", "idempotency key read"),
]


def _instrument(out: str) -> None:
    """Wrap every stage that exists; write the figures to `out` (JSON) at exit."""
    import atexit
    import importlib

    stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    lock = threading.Lock()

    def record(label: str, wall: float, cpu: float) -> None:
        with lock:
            entry = stats[label]
            entry[0] += 1
            entry[1] += wall
            entry[2] += cpu

    def wrap(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    record(label, time.perf_counter() - started, float("nan"))

            setattr(owner, name, timed_async)
        else:

            @functools.wraps(fn)
            def timed(*args: Any, **kwargs: Any) -> Any:
                started, cpu = time.perf_counter(), time.thread_time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    record(label, time.perf_counter() - started, time.thread_time() - cpu)

            setattr(owner, name, timed)

    for module_name, path, label in STAGES:
        try:
            owner: Any = importlib.import_module(module_name)
        except ModuleNotFoundError:  # a module of older or newer code
            continue
        *parents, name = path.split(".")
        with contextlib.suppress(AttributeError):
            for parent in parents:
                owner = getattr(owner, parent)
            if hasattr(owner, name):
                wrap(owner, name, label)

    def dump() -> None:
        Path(out).write_text(json.dumps({k: v for k, v in stats.items()}))

    atexit.register(dump)


def _cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False)
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--serve-timed", help=argparse.SUPPRESS)  # internal: the service side
    args, rest = parser.parse_known_args(argv)
    if args.serve_timed:
        _instrument(args.serve_timed)
        from gpuscribe.cli.main import main as gpuscribe_main

        return gpuscribe_main(rest)

    data_dir = Path(tempfile.mkdtemp(prefix="gpuscribe-stages-"))
    figures = data_dir / "stages.json"
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPUSCRIBE_")}
    command = [sys.executable, __file__, "--serve-timed", str(figures), "serve", "--host",
               "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
               "--simulate-gpus", "1x24GiB"]  # fmt: skip
    with (data_dir / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**clean, "GPUSCRIBE_SIMULATION_SPEED": "1000"},
            cwd=data_dir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((data_dir / "serve.log").read_text())
            time.sleep(0.1)
        body = small_wav()
        asyncio.run(run_load(url, body, 100, min(args.concurrency, 100)))  # warm-up
        before = _cpu_ticks(proc.pid)
        result = asyncio.run(run_load(url, body, args.submissions, args.concurrency))
        after = _cpu_ticks(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        stats = json.loads(figures.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    ticks = os.sysconf("SC_CLK_TCK")
    user, system = (
        (b - a) / ticks / args.submissions * 1000 for a, b in zip(before, after, strict=True)
    )
    summary = result.summary()
    print(
        f"{summary['accepted_per_second']}/s accepted, 429: {summary['refused_429']}, other: "
        f"{summary['other_statuses']}, errors: {summary['errors']}, latency p50 "
        f"{summary['latency_p50_ms']} ms; service CPU per submission: user {user:.2f} ms, "
        f"system {system:.2f} ms"
    )
    print(f"{'stage (warm-up included)':48} {'calls':>6} {'wall ms':>8} {'CPU ms':>7}")
    for label, (calls, wall, cpu) in sorted(stats.items(), key=lambda item: -item[1][1]):
        cpu_text = "" if cpu != cpu else f"{cpu / calls * 1000:7.3f}"  # NaN: async, wall only
        print(f"{label:48} {calls:6d} {wall / calls * 1000:8.3f} {cpu_text:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
