"""`gpuscribe serve` as a process: every bad setting stops start-up with one line naming it, a
non-zero exit and no traceback, before any worker starts; a misspelled variable is named with
the setting it resembles; Ctrl-C stops the service quietly and in order."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import wave
from pathlib import Path

import httpx
import pytest

from gpuscribe.store.open import open_store
from support.server import free_port

NO_GPU = shutil.which("nvidia-smi") is None
QUIET_FAILURES = ("Traceback", "did not shut down", "leaked", "Error:")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GPUSCRIBE_")
        and k not in ("MAX_MEMORY_UTILIZATION", "MAX_TASKS_PER_GPU")
    }
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def gpuscribe(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpuscribe", *args]


def serve_once(tmp_path: Path, port: int, **env: str) -> subprocess.CompletedProcess[str]:
    command = gpuscribe("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    return subprocess.run(
        command, env=clean_env(**env), capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("GPUSCRIBE_STORE", "mysql://x", "store='mysql://x'"),
        ("GPUSCRIBE_SIMULATE_GPUS", "2x24G", "simulate_gpus='2x24G'"),
        ("GPUSCRIBE_DEFAULT_MODEL", "tiny.ne", "default_model='tiny.ne'"),
        ("GPUSCRIBE_DEFAULT_MODEL", "large-v3", "default_model='large-v3'"),
        ("GPUSCRIBE_DEFAULT_ENGINE", "whisper.cpp", "default_engine='whisper.cpp'"),
        ("GPUSCRIBE_MAX_QUEUE_LENGTH", "0", "max_queue_length=0"),
        pytest.param(
            "GPUSCRIBE_DEVICES", "0", "devices='0'",
            marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU 0"),
        ),
    ],
)  # fmt: skip
def test_bad_setting_stops_start_up_with_one_line(
    tmp_path: Path, var: str, value: str, named: str
) -> None:
    proc = serve_once(tmp_path, free_port(), **{var: value})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gpuscribe:")]
    assert len(errors) == 1, proc.stderr
    assert named in errors[0]
    assert "Traceback" not in proc.stderr
    assert "started worker" not in proc.stderr
    assert "serving on" not in proc.stderr


def test_busy_port_is_reported_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = serve_once(tmp_path, port)
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "started worker" not in proc.stderr
    assert not (tmp_path / "data" / "gpuscribe.db").exists()  # not even the store was opened


def test_misspelled_variable_is_named_with_the_closest_setting(tmp_path: Path) -> None:
    proc = subprocess.run(
        gpuscribe("estimate", "--data-dir", str(tmp_path)),
        env=clean_env(GPUSCRIBE_MAX_UPLOADBYTES="5"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "GPUSCRIBE_MAX_UPLOADBYTES is not a gpuscribe setting" in proc.stderr
    assert "did you mean GPUSCRIBE_MAX_UPLOAD_BYTES?" in proc.stderr


def test_calibrate_an_absent_model_says_so_and_fails(tmp_path: Path) -> None:
    proc = subprocess.run(
        gpuscribe("calibrate", "--model", "large-v3", "--batch-size", "1,4",
                  "--data-dir", str(tmp_path)),
        env=clean_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "cannot calibrate --model large-v3" in proc.stderr
    assert "gpuscribe models pull large-v3" in proc.stderr
    assert "Traceback" not in proc.stderr


def _tone(path: Path, seconds: int) -> Path:
    rate = 16000
    frames = b"".join(
        struct.pack("<h", int(6000 * math.sin(2 * math.pi * 220 * i / rate)))
        for i in range(rate * seconds)
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return path


def _wait_healthy(url: str, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the service did not become healthy:\n{log.read_text()}")


def _wait_running(url: str, task_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v1/tasks/{task_id}", timeout=5).json()["state"] == "running":
            return
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never ran")


def test_ctrl_c_stops_quietly_and_in_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            gpuscribe("serve", "--port", str(port), "--data-dir", str(data)),
            env=clean_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )  # fmt: skip
    try:
        _wait_healthy(url, proc, log)
        audio = _tone(tmp_path / "tone.wav", 90)
        with audio.open("rb") as file:
            task = httpx.post(f"{url}/v1/tasks", files={"file": file}, timeout=30).json()
        _wait_running(url, task["id"])
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert code == 0, text
    for failure in QUIET_FAILURES:
        assert failure not in text, text
    assert "stopped" in text.splitlines()[-1]
    store = open_store(f"sqlite:///{data / 'gpuscribe.db'}")
    try:
        again = store.get(task["id"])
    finally:
        store.close()
    assert again is not None and again.state.value == "queued"  # back in the queue, not lost
