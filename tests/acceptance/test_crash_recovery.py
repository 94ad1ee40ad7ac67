"""The service killed with SIGKILL (itself and its workers, mid-task) and started again on the same
data directory: every task completes, none is lost, each has exactly one result, and each task's
history shows its states in order with one completion."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.audio import AudioSet
from support.server import ServiceProcess, get_task, list_tasks, submit, wait_all_done
from support.wer import word_error_rate

pytestmark = pytest.mark.slow

# Short leases so that the tasks the crash left running come back within seconds.
RECOVERY_ENV = {
    "GPUSCRIBE_LEASE_SECONDS": "4",
    "GPUSCRIBE_HEARTBEAT_SECONDS": "1",
    "CUDA_VISIBLE_DEVICES": "",
}
ALLOWED = {
    ("queued", "running"),
    ("running", "queued"),  # a lease lost in the crash, recovered
    ("running", "completed"),
}


def _states(url: str) -> dict[str, int]:
    queue = httpx.get(f"{url}/v1/queue", timeout=10).json()
    return dict(queue["state"])


def _wait_mid_run(url: str, timeout: float) -> dict[str, int]:
    """Until some tasks run and some are still queued."""
    deadline = time.monotonic() + timeout
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        states = _states(url)
        if states.get("running", 0) >= 1 and states.get("queued", 0) >= 1:
            return states
        time.sleep(0.05)
    raise AssertionError(f"never saw tasks running and queued at once: {states}")


def _check_history(task: dict[str, Any]) -> None:
    states = [event["state"] for event in task["history"]]
    assert states[0] == "queued", states
    assert states[-1] == "completed", states
    assert states.count("completed") == 1, f"completed twice: {states}"
    changes = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    for before, after in itertools.pairwise(changes):
        assert (before, after) in ALLOWED, f"{before} -> {after} in {states}"
    assert changes.count("running") == task["attempts"], (task["attempts"], states)


def _crash_and_recover(
    service: ServiceProcess, task_ids: list[str], timeout: float
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    before = _wait_mid_run(service.url, timeout=120)
    service.kill()
    assert not service.alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{service.url}/healthz", timeout=2)
    service.start()
    done = wait_all_done(service.url, task_ids, timeout=timeout)
    return before, done


def test_sigkill_mid_transcription_on_cpu(audio: AudioSet, tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path / "data", env=RECOVERY_ENV)
    with service:
        # Ten clips of about 8 s, beam 1 (quick on two cores); the kill comes as soon as some
        # run while others wait.
        clips = [audio.speech(i % 8, ("flac", "wav", "mp3")[i // 8]) for i in range(10)]
        ids = [submit(service.url, clip.path, beam_size=1)["id"] for clip in clips]
        before, done = _crash_and_recover(service, ids, timeout=300)

        assert len(done) == len(ids)
        listed = list_tasks(service.url, limit=1000)
        assert sorted(t["id"] for t in listed) == sorted(ids), "tasks lost or duplicated"
        for clip, task_id in zip(clips, ids, strict=True):
            task = get_task(service.url, task_id)
            assert task["state"] == "completed", task
            _check_history(task)
            result = httpx.get(
                f"{service.url}/v1/tasks/{task_id}/result", params={"format": "json"}, timeout=30
            )
            assert result.status_code == 200, result.text
            text = result.json()["text"]
            assert word_error_rate(clip.text, text) < 0.8, (clip.path.name, text)
        # The tasks that were running when the service died ran again.
        retried = [t for t in done.values() if t["attempts"] > 1]
        assert len(retried) >= min(1, before.get("running", 0)), (before, list(done.values()))


def test_sigkill_with_simulated_gpus(audio: AudioSet, tmp_path: Path) -> None:
    env = {**RECOVERY_ENV, "GPUSCRIBE_SIMULATION_SPEED": "30", "GPUSCRIBE_BENCHMARK_ONLY": "1"}
    service = ServiceProcess(tmp_path / "data", simulate_gpus="2x24GiB", env=env)
    with service:
        lengths = (10, 30, 60, 120)
        models = ("tiny", "base", "small")
        ids = [
            submit(
                service.url,
                audio.silence(lengths[i % 4], "flac"),
                model=models[i % 3],
                priority=("high", "normal", "low")[i % 3],
            )["id"]
            for i in range(50)
        ]
        _crash_and_recover(service, ids, timeout=300)

        listed = list_tasks(service.url, limit=1000)
        assert sorted(t["id"] for t in listed) == sorted(ids), "tasks lost or duplicated"
        for task_id in ids:
            task = get_task(service.url, task_id)
            assert task["state"] == "completed", task
            _check_history(task)
            result = httpx.get(f"{service.url}/v1/tasks/{task_id}/result", timeout=30)
            assert result.status_code == 200, result.text
        gpus = httpx.get(f"{service.url}/v1/gpus", timeout=10).json()["gpus"]
        # Nothing the dead service had admitted is still charged after the restart.
        assert all(g["tasks_running"] == 0 for g in gpus), gpus
        assert all(g["memory_reserved_bytes"] <= g["memory_cap_bytes"] for g in gpus), gpus
