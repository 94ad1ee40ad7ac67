"""Nothing lost: tasks running or waiting when the whole service is SIGKILLed complete after a
restart, each exactly once; and a second node takes over the tasks of a dead node once their
leases run out (never before).

The service runs as a real process group (`gpuscribe serve`) on a SQLite store; SIGKILL goes to
the group, as a power cut or the OOM killer would do it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuscribe.domain import TaskState
from gpuscribe.store.open import open_store
from support.audio import AudioSet
from support.server import ServiceProcess, submit, wait_all_done

pytestmark = pytest.mark.slow

TASKS = 20
LEASE_SECONDS = 3
HEARTBEAT_SECONDS = 1
# Simulated GPUs: audio seconds per second. Each ~9 s clip holds its GPU for ~3 s.
SIMULATION_SPEED = 3

SIM_ENV = {
    "GPUSCRIBE_SIMULATION_SPEED": str(SIMULATION_SPEED),
    "GPUSCRIBE_LEASE_SECONDS": str(LEASE_SECONDS),
    "GPUSCRIBE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
    "GPUSCRIBE_RETRY_BASE_SECONDS": "0.2",
    "GPUSCRIBE_NODE_NAME": "node-a",
}


# --- helpers ------------------------------------------------------------------------------------
def _task_list(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/v1/tasks", params={"limit": 1000}, timeout=30.0)
    response.raise_for_status()
    tasks: list[dict[str, Any]] = response.json()["tasks"]
    return tasks


def _task_with_history(client: httpx.Client, url: str, task_id: str) -> dict[str, Any]:
    response = client.get(f"{url}/v1/tasks/{task_id}")
    response.raise_for_status()
    task: dict[str, Any] = response.json()
    assert task["history"] is not None, f"GET /v1/tasks/{task_id} has no history: {task}"
    return task


def _wait_for_running(url: str, ids: set[str], *, at_least: int, timeout: float) -> None:
    """Until at least `at_least` of the tasks are running (and some still wait)."""
    deadline = time.monotonic() + timeout
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        tasks = [t for t in _task_list(url) if t["id"] in ids]
        states = {}
        for task in tasks:
            states[task["state"]] = states.get(task["state"], 0) + 1
        if states.get("running", 0) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"never {at_least} tasks running within {timeout:.0f} s: {states}")


def _check_exactly_once(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every task completed once: one `completed` event, attempts = `running` claims, a result."""
    found: dict[str, dict[str, Any]] = {}
    with httpx.Client(timeout=30.0) as client:
        for task_id in ids:
            task = _task_with_history(client, url, task_id)
            history = task["history"]
            states = [event["state"] for event in history]
            assert task["state"] == "completed", f"{task_id}: {task['state']} {task['error']}"
            assert states.count("completed") == 1, f"{task_id} history: {history}"
            assert states[-1] == "completed", f"{task_id} history: {history}"
            claims = [
                e
                for e in history
                if e["state"] == "running" and (e["detail"] or "").startswith("attempt")
            ]
            assert task["attempts"] == len(claims) >= 1, (
                f"{task_id}: attempts {task['attempts']} but claims {history}"
            )
            assert task["attempts"] <= task["max_attempts"], task
            result = client.get(f"{url}/v1/tasks/{task_id}/result", params={"format": "json"})
            assert result.status_code == 200, f"{task_id}: {result.status_code} {result.text}"
            assert isinstance(result.json().get("text"), str), result.text
            found[task_id] = task
    listed = [t["id"] for t in _task_list(url)]
    assert len(listed) == len(set(listed)), "GET /v1/tasks lists a task twice"
    return found


# --- one node, killed and restarted -------------------------------------------------------------
@pytest.mark.parametrize("device", ["simulated", "cpu"])
def test_sigkill_with_tasks_running_and_waiting_then_restart(
    device: str, audio: AudioSet, tmp_path: Path
) -> None:
    if device == "simulated":
        service = ServiceProcess(tmp_path / "data", simulate_gpus="1x24GiB", env=SIM_ENV)
        clips = [audio.speech(i % 8, "wav").path for i in range(TASKS)]
        fields = {}
        running_before_kill = 3
    else:
        env = {**SIM_ENV, "CUDA_VISIBLE_DEVICES": ""}
        env.pop("GPUSCRIBE_SIMULATION_SPEED")
        service = ServiceProcess(tmp_path / "data", env=env)
        # Real tiny.en on the CPU (two at once): 3 s cuts of the speech clips, beam 1, keep
        # the 20 transcriptions within the 2-core budget.
        clips = [audio.first_seconds(i, 3.0) for i in range(8)]
        clips = [clips[i % 8] for i in range(TASKS)]
        fields = {"beam_size": 1, "language": "en"}
        running_before_kill = 1
    service.start()
    try:
        ids = [submit(service.url, clip, priority="normal", **fields)["id"] for clip in clips]
        assert len(set(ids)) == TASKS
        _wait_for_running(service.url, set(ids), at_least=running_before_kill, timeout=60)
        before = {t["id"]: t["state"] for t in _task_list(service.url) if t["id"] in ids}
        service.kill()
        assert not service.alive()
        assert "queued" in before.values() or "running" in before.values(), before

        service.start()
        done = wait_all_done(service.url, ids, timeout=240)
        assert sorted(done) == sorted(ids)
        tasks = _check_exactly_once(service.url, ids)
        # Whatever ran when the service died ran again: a second claim was counted for some.
        assert any(t["attempts"] >= 2 for t in tasks.values()), (
            "no task was running when the service was killed, so nothing was recovered: "
            f"states before the kill {before}"
        )
        for task in tasks.values():
            history = [e["state"] for e in task["history"]]
            if task["attempts"] >= 2:
                # running -> queued (requeued after the crash) -> running -> completed
                assert history.count("queued") >= 2, task["history"]
        if device == "cpu":
            for task_id in ids:
                text = httpx.get(
                    f"{service.url}/v1/tasks/{task_id}/result",
                    params={"format": "text"},
                    timeout=30,
                ).text
                assert text.strip(), f"{task_id}: empty transcript after recovery"
        # No queue left behind: nothing queued or running once all are final.
        queue = httpx.get(f"{service.url}/v1/queue", timeout=30).json()
        assert queue["state"]["queued"] == 0 and queue["state"]["running"] == 0, queue
        assert queue["state"]["completed"] == TASKS, queue
    finally:
        service.stop()


# --- a second node takes over -------------------------------------------------------------------
@contextlib.contextmanager
def _worker_node(
    data_dir: Path, store_url: str, node_name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`gpuscribe worker` (no API) joining the same SQLite store, in its own process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSCRIBE_")}
    env.update(SIM_ENV)
    env["GPUSCRIBE_NODE_NAME"] = node_name
    env["PYTHONUNBUFFERED"] = "1"
    log_path = data_dir / f"worker-{node_name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpuscribe",
                "worker",
                "--store",
                store_url,
                "--data-dir",
                str(data_dir),
                "--simulate-gpus",
                "1x24GiB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(data_dir),
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_second_node_takes_over_after_leases_expire(audio: AudioSet, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node_a = ServiceProcess(data_dir, simulate_gpus="1x24GiB", env=SIM_ENV)
    store_url = f"sqlite:///{node_a.store_path}"
    node_a.start()
    try:
        ids = [submit(node_a.url, audio.speech(i % 8, "wav").path)["id"] for i in range(12)]
        _wait_for_running(node_a.url, set(ids), at_least=3, timeout=60)
        node_a.kill()
        killed_at = time.time()

        store = open_store(store_url)
        try:
            orphans = {t.id: t for t in store.list_tasks(state=TaskState.RUNNING, limit=1000)}
            assert orphans, "nothing was running on node-a when it was killed"
            for task in orphans.values():
                assert task.node == "node-a" and task.lease_expires_at is not None, task
            lease_ends = {tid: t.lease_expires_at or 0.0 for tid, t in orphans.items()}

            with _worker_node(data_dir, store_url, "node-b") as worker:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    assert worker.poll() is None, (
                        f"gpuscribe worker exited with {worker.returncode}: "
                        + (data_dir / "worker-node-b.log").read_text()[-3000:]
                    )
                    states = [store.get(tid) for tid in ids]
                    if all(t is not None and t.state.is_final for t in states):
                        break
                    time.sleep(0.2)
                else:
                    pending = {t.id: t.state.value for t in states if t and not t.state.is_final}
                    raise AssertionError(f"node-b did not finish the tasks: {pending}")

            for task_id, lease_end in lease_ends.items():
                task = store.get(task_id)
                assert task is not None
                assert task.state is TaskState.COMPLETED, (task.state, task.error)
                assert task.node == "node-b", f"{task_id} finished on {task.node}"
                assert task.attempts == 2, f"{task_id}: attempts {task.attempts}"
                # Taken over only once node-a's lease had run out, never while it might live.
                assert task.started_at is not None and task.started_at >= lease_end, (
                    f"{task_id} restarted at {task.started_at}, before node-a's lease ended "
                    f"at {lease_end}"
                )
                events = store.history(task_id)
                details = [e.detail or "" for e in events if e.state is TaskState.QUEUED]
                assert any("lease expired" in d for d in details), events
            assert min(lease_ends.values()) >= killed_at - LEASE_SECONDS - 1
        finally:
            store.close()

        # Node-a comes back with its API: it has nothing to recover, and every task is there,
        # completed exactly once.
        node_a.start()
        _check_exactly_once(node_a.url, ids)
    finally:
        node_a.stop()


# --- only the worker processes die; the service lives on ----------------------------------------
def _worker_pids(service_pid: int) -> list[int]:
    """Worker processes the service spawned (multiprocessing's spawn entry point), not its
    resource tracker."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == service_pid and "spawn_main" in cmdline and "resource_tracker" not in cmdline:
            pids.append(int(entry.name))
    return pids


def _wait_for_new_workers(service_pid: int, killed: set[int], *, timeout: float) -> list[int]:
    """The worker processes that replaced those already killed (the service restarts them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [pid for pid in _worker_pids(service_pid) if pid not in killed]
        if fresh:
            return fresh
        time.sleep(0.1)
    raise AssertionError(f"no new worker process under the service within {timeout:.0f} s")


def test_sigkill_of_the_workers_loses_nothing(audio: AudioSet, tmp_path: Path) -> None:
    """SIGKILL the worker process twice while 20 real tasks run or wait: the service restarts
    it, retries what it ran, and every task completes once, with one result."""
    env = {**SIM_ENV, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("GPUSCRIBE_SIMULATION_SPEED")
    service = ServiceProcess(tmp_path / "data", env=env)
    clips = [audio.first_seconds(i, 3.0) for i in range(8)]
    service.start()
    try:
        assert service.proc is not None
        ids = [
            submit(service.url, clips[i % 8], beam_size=1, language="en")["id"]
            for i in range(TASKS)
        ]
        killed: set[int] = set()
        for _ in range(2):
            workers = _wait_for_new_workers(service.proc.pid, killed, timeout=90)
            _wait_for_running(service.url, set(ids), at_least=1, timeout=90)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed.update(workers)
            assert service.alive()
        done = wait_all_done(service.url, ids, timeout=300)
        assert sorted(done) == sorted(ids)
        tasks = _check_exactly_once(service.url, ids)
        assert any(t["attempts"] >= 2 for t in tasks.values()), "nothing was retried"
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
    finally:
        service.stop()
