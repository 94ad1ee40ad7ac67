"""Memory early warning on simulated GPUs (`serve --simulate-gpus 2x24GiB`): a process outside
gpuscribe grows on GPU 0 while tasks run there until the warning fires; the service logs it once,
shows it in `/v1/gpus` and `/metrics`, and admits nothing onto GPU 0 (a new task goes to GPU 1,
the next waits saying why) until the process shrinks and the GPU has been calm for a while."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuscribe.memory.types import GIB
from gpuscribe.telemetry.simulated import FOREIGN_FILE_NAME
from support.audio import AudioSet
from support.server import ServiceProcess, get_task, submit

pytestmark = pytest.mark.slow

ENV = {
    "GPUSCRIBE_SIMULATION_SPEED": "20",  # a 20 min file runs for a minute: longer than the test
    "MAX_TASKS_PER_GPU": "2",
    "GPUSCRIBE_BENCHMARK_ONLY": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "GPUSCRIBE_MEMORY_WARNING_FOREIGN_GROWTH_BYTES": "2GiB",
    "GPUSCRIBE_MEMORY_WARNING_CLEAR_SECONDS": "1",
}
EPISODE_LINE = "memory warning on GPU 0"


@pytest.fixture
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        tmp_path_factory.mktemp("warn-2x24"), simulate_gpus="2x24GiB", env=ENV
    ) as running:
        yield running


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll until `check()` returns something truthy; that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def gpus(url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{url}/v1/gpus", timeout=10).json()["gpus"]
    return found


def metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


def running_on(url: str, task_id: str) -> int:
    """The GPU of the task once it runs."""
    task = wait_for(f"task {task_id} running", lambda: running(url, task_id))
    gpu: int = task["gpu"]
    return gpu


def running(url: str, task_id: str) -> dict[str, Any] | None:
    task = get_task(url, task_id)
    return task if task["state"] == "running" else None


def wait_foreign(url: str, nbytes: int) -> None:
    """Until the node's device watch has seen GPU 0's foreign process hold `nbytes`."""
    name = "gpuscribe_gpu_memory_foreign_bytes"
    wait_for(f"{nbytes} B foreign", lambda: metric(url, name, gpu="0") == nbytes)


def test_a_growing_foreign_process_warns_and_closes_its_gpu_until_it_shrinks(
    service: ServiceProcess, audio: AudioSet
) -> None:
    url, foreign = service.url, service.data_dir / FOREIGN_FILE_NAME
    long_audio = audio.silence(1200, "flac")
    first, second = (submit(url, long_audio, model="tiny")["id"] for _ in range(2))
    assert {running_on(url, first), running_on(url, second)} == {0, 1}  # one on each GPU
    # The device watch has seen the task run on GPU 0 with nothing foreign there: growth counts
    # from here.
    wait_for(
        "the watch seeing the task", lambda: metric(url, "gpuscribe_gpu_tasks_running", gpu="0")
    )

    for gib in (1, 2, 3):  # the process outside gpuscribe grows on GPU 0 while a task runs
        foreign.write_text(json.dumps({"0": gib * GIB}))
        wait_foreign(url, gib * GIB)
    warned = wait_for("a warning on GPU 0", lambda: gpus(url)[0]["memory_warning"])
    assert warned["condition"] == "foreign_growth"
    assert warned["message"].startswith("other processes' memory grew by 3.00 GiB (to 3.00 GiB)")
    assert warned["since"].endswith("Z")
    assert gpus(url)[1]["memory_warning"] is None
    warned_uuid = gpus(url)[0]["uuid"]
    foreign.write_text(json.dumps({"0": 4 * GIB}))  # grows on: the same episode
    wait_foreign(url, 4 * GIB)
    assert gpus(url)[0]["memory_warning"] == warned
    sim0 = {"gpu": "0", "device": "sim0", "modelName": "Simulated GPU 24GiB"}  # DCGM's labels
    assert metric(url, "gpuscribe_gpu_memory_warning", **sim0) == 1
    assert metric(url, "gpuscribe_gpu_memory_warning", gpu="1", device="sim1") == 0
    episodes = "gpuscribe_gpu_memory_warnings_total"
    assert metric(url, episodes, gpu="0", condition="foreign_growth") == 1

    # GPU 0 (one task, as GPU 1) would take the next task first; warned, it takes none.
    third = submit(url, long_audio, model="tiny")["id"]
    assert running_on(url, third) == 1
    fourth = submit(url, long_audio, model="tiny")["id"]  # GPU 1 is full (2 tasks): it waits
    reason = wait_for("a wait reason", lambda: get_task(url, fourth).get("wait_reason"))
    assert get_task(url, fourth)["state"] == "queued"
    assert reason.startswith("GPU 0: memory warning, other processes' memory grew"), reason
    assert "GPU 1: 2 of 2 tasks running" in reason, reason

    foreign.write_text(json.dumps({"0": 0}))  # the process lets go: calm, then over
    assert running_on(url, fourth) == 0
    assert gpus(url)[0]["memory_warning"] is None
    assert metric(url, "gpuscribe_gpu_memory_warning", **sim0) == 0
    log = service.log_path.read_text()
    began = [line for line in log.splitlines() if "no new task goes there" in line]
    assert len(began) == 1, service.log_tail()  # one line for the episode, however it grew
    assert f"WARNING gpuscribe.node.upkeep: {EPISODE_LINE} (" in began[0]
    assert f"{EPISODE_LINE} ({warned_uuid}) is over: tasks are admitted there again" in log

    for task_id in (first, second, third, fourth):
        httpx.delete(f"{url}/v1/tasks/{task_id}", timeout=10)
