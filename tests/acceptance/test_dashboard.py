"""The dashboard at `/` in a real headless Chromium, against a service on simulated GPUs (one of
them shared with a process outside gpuscribe) with tasks running and queued: it shows every GPU
as `/v1/gpus` reports it, the running and queued tasks, a memory plot; a task's page shows its
transcript (real speech, on the CPU); its upload form creates a task; and with API keys set it
asks for one.

With `GPUSCRIBE_SCREENSHOTS=1` the test first runs a mixed stream for over three minutes (so
the plots have minutes to show) and writes the screenshots of docs/dashboard/.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpuscribe.memory.types import GIB
from gpuscribe.telemetry.simulated import FOREIGN_FILE_NAME
from support.audio import AudioSet
from support.browser import chromium, chromium_or_skip, screenshot, wait_for
from support.server import ServiceProcess, list_tasks, submit, wait_all_done, wait_done

pytestmark = pytest.mark.slow

MAX_TASKS = 3
FOREIGN_GIB = 7
GPUS = f"1x24GiB:NVIDIA L4,1x24GiB+{FOREIGN_GIB}GiB:NVIDIA L4,1x48GiB:NVIDIA L40S"
SPEED = 10  # audio seconds a simulated task transcribes per second: 20 min take two minutes
SIM_ENV = {
    "GPUSCRIBE_SIMULATION_SPEED": str(SPEED),
    "MAX_TASKS_PER_GPU": str(MAX_TASKS),
    "GPUSCRIBE_BENCHMARK_ONLY": "1",
    "CUDA_VISIBLE_DEVICES": "",
}
SCREENSHOTS = os.environ.get("GPUSCRIBE_SCREENSHOTS", "").strip() in ("1", "true", "yes")
SHOTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "dashboard"
STREAM_SECONDS = 200.0 if SCREENSHOTS else 4.0
DESKTOP, PHONE = (1440, 1000), (390, 844)
PRIORITIES = ("urgent", "high", "normal", "low")


@pytest.fixture(scope="module", autouse=True)
def browser_present() -> None:
    chromium_or_skip()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    data_dir = tmp_path_factory.mktemp("dashboard")
    with ServiceProcess(data_dir, simulate_gpus=GPUS, env=SIM_ENV) as svc:
        yield svc


def _stream(url: str, audio: AudioSet, until: float) -> list[dict[str, Any]]:
    """Short tasks of every model and priority, a few a second, until `until`; those tasks."""
    rng = random.Random(12)
    tasks = []
    while time.monotonic() < until:
        seconds = rng.choice((20, 40, 60, 120, 240))
        model = rng.choice(("tiny", "base", "small", "medium", "large-v3", "turbo"))
        priority = rng.choice(PRIORITIES)
        tasks.append(submit(url, audio.silence(seconds, "flac"), model=model, priority=priority))
        time.sleep(rng.uniform(0.3, 1.2))
    return tasks


@pytest.fixture(scope="module")
def busy(service: ServiceProcess, audio: AudioSet) -> dict[str, Any]:
    """A mixed stream, then every slot held by a long task and more tasks queued behind them:
    what the page shows stays put while the test reads it."""
    url = service.url
    for model in ("tiny", "base", "small"):  # alone on the node: calibration learns from them
        alone = submit(url, audio.silence(20, "flac"), model=model)
        assert wait_done(url, alone["id"], timeout=60)["state"] == "completed"
    stream = _stream(url, audio, time.monotonic() + STREAM_SECONDS)
    wait_all_done(url, [t["id"] for t in stream], timeout=300)
    failed = submit(
        url, audio.silence(1200, "flac"), model="large-v3", beam_size=20, batch_size=64
    )  # needs more than any GPU's cap: it fails at once, saying so
    long = audio.silence(1200, "flac")
    running = [submit(url, long, model="tiny", priority="normal") for _ in range(3 * MAX_TASKS)]
    ids = {t["id"] for t in running}
    _wait_until(lambda: ids <= {t["id"] for t in list_tasks(url, "running")}, "all slots taken")
    queued = [
        submit(url, audio.silence(60, "flac"), model="base", priority=PRIORITIES[i % 4])
        for i in range(8)
    ]
    assert wait_done(url, failed["id"], timeout=30)["state"] == "failed"
    return {"running": running, "queued": queued, "failed": failed}


def _wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def _plots_fit(driver: Any) -> bool:
    """Every memory plot is as wide as its box (they are drawn again when the width changes)."""
    script = """return [...document.querySelectorAll('.gpu-card .plot')].every((box) => {
        const plot = box.querySelector('svg.memory-plot');
        return plot && Math.abs(plot.width.baseVal.value - Math.max(240, box.clientWidth)) < 2;
    })"""
    return bool(driver.execute_script(script))


def _ids(driver: Any, selector: str) -> set[str]:
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset.taskId)"
    return set(driver.execute_script(script, selector))


def test_dashboard_shows_gpus_tasks_and_plots(
    service: ServiceProcess, busy: dict[str, Any]
) -> None:
    gpus = httpx.get(f"{service.url}/v1/gpus", timeout=10).json()["gpus"]
    running = {t["id"] for t in busy["running"]}
    queued = {t["id"] for t in busy["queued"]}
    with chromium(*DESKTOP) as driver:
        driver.get(service.url + "/")
        wait_for(driver, lambda d: _ids(d, "#gpus .running li") == running, "the running tasks")
        wait_for(driver, lambda d: _ids(d, "#queue tr[data-task-id]") == queued, "the queue")
        failed = {busy["failed"]["id"]}
        wait_for(driver, lambda d: _ids(d, "#failures tr[data-task-id]") == failed, "the failure")
        for gpu in gpus:
            card = driver.find_element("css selector", f'.gpu-card[data-uuid="{gpu["uuid"]}"]')
            assert gpu["name"] in card.text
            assert f"cap {gpu['memory_cap_bytes'] / GIB:.1f} GiB" in card.text, card.text
            areas = card.find_elements("css selector", "svg.memory-plot path.area-gpuscribe")
            assert areas and areas[0].get_attribute("d").count("L") > 2, "no memory plot"
        foreign = driver.find_element("css selector", '.gpu-card[data-index="1"]')
        assert f"other processes {FOREIGN_GIB:.1f} GiB" in foreign.text, foreign.text
        calibration = httpx.get(f"{service.url}/v1/calibration", timeout=10).json()
        rows = calibration["calibration"]
        assert rows, "nothing calibrated: the tasks that ran alone taught nothing"
        table = "#calibration tr"
        shown = wait_for(driver, lambda d: d.find_elements("css selector", table), "calibration")
        assert len(shown) == 1 + len(rows)  # the headings, then one row per key
        why = driver.find_element("css selector", "#queue tr[data-task-id] td.why").text
        assert why, "a queued task does not say why it waits"
        if SCREENSHOTS:
            shots = (("dashboard.png", DESKTOP[0], 1.0), ("dashboard-phone.png", PHONE[0], 1.5))
            for name, width, scale in shots:
                screenshot(driver, SHOTS_DIR / name, width=width, scale=scale, ready=_plots_fit)


def test_a_gpus_memory_warning_is_shown_on_its_card(
    service: ServiceProcess, busy: dict[str, Any]
) -> None:
    """Another process takes most of GPU 2 (48 GiB): its used memory passes the warning level
    (0.85 of total) and the card says so, with the message /v1/gpus gives."""
    foreign = service.data_dir / FOREIGN_FILE_NAME
    foreign.write_text(json.dumps({"2": 42 * GIB}))
    try:
        with chromium(*DESKTOP) as driver:
            driver.get(service.url + "/")
            card = '.gpu-card[data-index="2"]'
            alert = wait_for(
                driver,
                lambda d: d.find_elements("css selector", f"{card} .gpu-warning"),
                "the warning on GPU 2's card",
            )[0]
            gpus = httpx.get(f"{service.url}/v1/gpus", timeout=10).json()["gpus"]
            warning = next(g for g in gpus if g["index"] == 2)["memory_warning"]
            assert warning and warning["condition"] == "used_high", warning
            assert warning["message"] in alert.text, alert.text
            assert "memory warning since" in alert.text, alert.text
            assert not driver.find_elements(
                "css selector", '.gpu-card[data-index="0"] .gpu-warning'
            )
    finally:
        foreign.write_text(json.dumps({}))


def test_task_page_shows_the_transcript(cpu_service: ServiceProcess, audio: AudioSet) -> None:
    """Real speech on the CPU (tiny.en): its words, their times, a download in every format."""
    clip = audio.speech(0, "wav")
    task = wait_done(cpu_service.url, submit(cpu_service.url, clip.path)["id"], timeout=180)
    assert task["state"] == "completed", task
    with chromium(*DESKTOP) as driver:
        driver.get(f"{cpu_service.url}/tasks/{task['id']}")
        segments = "#transcript .segment"
        wait_for(driver, lambda d: d.find_elements("css selector", segments), "the segments")
        page = driver.find_element("tag name", "main").text
        assert task["id"] in page and "completed" in page
        assert "the CPU on" in page and "GPU 0" not in page  # a node without GPUs ran it
        assert "00:00.0 →" in page  # the first segment's times
        shown = " ".join(e.text for e in driver.find_elements("css selector", segments)).lower()
        first_word = clip.text.split()[0].strip(".,").lower()
        assert first_word in shown, (first_word, shown)
        formats = driver.find_elements("css selector", "#downloads button[data-format]")
        assert {b.get_attribute("data-format") for b in formats} == {
            "text",
            "srt",
            "vtt",
            "tsv",
            "json",
            "verbose_json",
        }
        if SCREENSHOTS:
            screenshot(driver, SHOTS_DIR / "task.png", width=1100)
            screenshot(driver, SHOTS_DIR / "task-phone.png", width=PHONE[0], scale=1.5)


def test_upload_form_with_an_api_key(
    tmp_path_factory: pytest.TempPathFactory, audio: AudioSet
) -> None:
    """With keys set, the page asks for one, then shows the GPUs and uploads with it."""
    env = {**SIM_ENV, "GPUSCRIBE_API_KEYS": "s3cret"}
    data_dir = tmp_path_factory.mktemp("dashboard-keys")
    with ServiceProcess(data_dir, simulate_gpus="1x24GiB", env=env) as svc, chromium() as driver:
        driver.get(svc.url + "/")
        key_input = wait_for(driver, lambda d: d.find_element("id", "api-key-input"), "a key asked")
        key_input.send_keys("s3cret")
        driver.find_element("id", "api-key-submit").click()
        wait_for(driver, lambda d: d.find_elements("css selector", ".gpu-card"), "the GPUs")
        clip = audio.silence(30, "wav")
        driver.find_element("id", "upload-file").send_keys(str(clip))
        driver.find_element("id", "upload-priority").send_keys("high")
        driver.find_element("id", "upload-submit").click()
        status = driver.find_element("id", "upload-status")
        task_id = wait_for(driver, lambda d: status.get_attribute("data-task-id"), "the new task")
        headers = {"Authorization": "Bearer s3cret"}
        stored = httpx.get(f"{svc.url}/v1/tasks/{task_id}", headers=headers, timeout=10).json()
        assert stored["priority"] == "high", stored
        assert stored["original_filename"] == clip.name, stored
