"""The client and the client commands against a real HTTP server: a small FastAPI app in a
uvicorn thread that answers like gpuscribe, errors included."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from gpuscribe.cli.client import ApiClient, ApiError, ClientError, ServerUnreachable
from gpuscribe.cli.main import main

API_KEY = "secret"
GPU = {
    "index": 0,
    "uuid": "GPU-0",
    "name": "Simulated GPU 24GiB",
    "memory_total_bytes": 24 << 30,
    "memory_used_bytes": 3 << 30,
    "memory_reserved_bytes": 2 << 30,
    "memory_cap_bytes": 21 << 30,
    "tasks_running": 1,
    "max_tasks": 5,
    "utilization_percent": 12.0,
    "temperature_c": None,
    "power_watts": None,
}
WARNED_GPU = {
    **GPU,
    "index": 1,
    "uuid": "GPU-1",
    "memory_warning": {
        "condition": "used_high",
        "since": "2026-01-02T03:04:05.000Z",
        "message": "memory use 20.50 GiB of 24.00 GiB (85.4%) passed the warning level of 80%",
    },
}
GPUS = [GPU, WARNED_GPU]


def error(status: int, message: str, code: str, **headers: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class FakeService:
    """Tasks advance one step per status read: queued -> running -> completed (or failed)."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.forms: list[dict[str, str]] = []
        self.reads: dict[str, int] = {}
        self.result_queries: list[dict[str, str]] = []

    def new_task(self, filename: str) -> dict[str, Any]:
        task_id = f"task-{len(self.tasks) + 1}"
        task = {
            "id": task_id,
            "state": "queued",
            "priority": "normal",
            "model": "tiny.en",
            "engine": "faster-whisper",
            "gpu": None,
            "progress": 0.0,
            "audio_seconds": 1.0,
            "memory_estimate_bytes": 1 << 30,
            "memory_peak_bytes": None,
            "attempts": 0,
            "error": None,
            "created_at": time.time(),
            "started_at": None,
            "finished_at": None,
            "filename": filename,
        }
        self.tasks[task_id] = task
        return task

    def advance(self, task: dict[str, Any]) -> None:
        if task["state"] == "queued":
            task.update(state="running", progress=0.5, gpu=0, attempts=1)
        elif task["state"] == "running" and task["filename"] == "fails.wav":
            task.update(state="failed", error="decoder exploded")
        elif task["state"] == "running":
            task.update(state="completed", progress=1.0, finished_at=time.time())


def build_app(fake: FakeService) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if request.url.path != "/healthz" and request.headers.get("authorization") != (
            f"Bearer {API_KEY}"
        ):
            return error(401, "missing or wrong API key", "invalid_api_key")
        return await call_next(request)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/tasks", status_code=202, response_model=None)
    async def submit(request: Request) -> Any:
        form = await request.form()
        upload: Any = form["file"]
        fake.forms.append({k: str(v) for k, v in form.items() if k != "file"})
        if upload.filename == "bad.wav":
            return error(400, "bad.wav is not audio", "invalid_audio")
        if upload.filename == "full.wav":
            return error(429, "the queue is full", "queue_full", **{"Retry-After": "7"})
        return fake.new_task(upload.filename)

    @app.get("/v1/tasks/{task_id}", response_model=None)
    def status(task_id: str) -> Any:
        task = fake.tasks.get(task_id)
        if task is None:
            return error(404, f"no task {task_id}", "task_not_found")
        fake.advance(task)
        return task

    @app.get("/v1/tasks/{task_id}/result", response_model=None)
    def result(task_id: str, request: Request, format: str = "json") -> Any:
        fake.result_queries.append(dict(request.query_params))
        task = fake.tasks[task_id]
        if task["state"] != "completed":
            return error(409, f"task {task_id} is {task['state']}", "not_completed")
        if format in ("json", "verbose_json"):
            return {"text": f"hello from {task['filename']}"}
        return PlainTextResponse(f"[{format}] hello from {task['filename']}\n")

    @app.delete("/v1/tasks/{task_id}")
    def cancel(task_id: str) -> dict[str, Any]:
        task = fake.tasks[task_id]
        task["state"] = "cancelled"
        return task

    @app.get("/v1/tasks")
    def tasks(state: str | None = None, limit: int = 100) -> dict[str, Any]:
        found = [t for t in fake.tasks.values() if state is None or t["state"] == state]
        return {"tasks": found[:limit]}

    @app.get("/v1/gpus")
    def gpus() -> dict[str, Any]:
        return {"gpus": GPUS}

    @app.get("/v1/queue")
    def queue() -> dict[str, Any]:
        return {"state": {"queued": 0}, "priority": {}}

    @app.get("/v1/calibration")
    def calibration() -> dict[str, Any]:
        return {"rows": []}

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeService]]:
    fake = FakeService()
    port = free_port()
    config = uvicorn.Config(build_app(fake), host="127.0.0.1", port=port, log_level="error")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", fake
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, server: tuple[str, FakeService]) -> None:
    monkeypatch.setenv("GPUSCRIBE_SERVER", server[0])
    monkeypatch.setenv("GPUSCRIBE_API_KEY", API_KEY)


def make_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * 1600)
    return path


def client(url: str, key: str | None = API_KEY) -> ApiClient:
    return ApiClient(url, key, timeout=5.0)


def test_submit_sends_form_fields_and_returns_the_task(
    server: tuple[str, FakeService], tmp_path: Path
) -> None:
    url, fake = server
    with client(url) as api:
        task = api.submit(
            make_wav(tmp_path / "a.wav"), model="base", word_timestamps=True, language=None
        )
    assert task["state"] == "queued"
    assert fake.forms[-1] == {"model": "base", "word_timestamps": "true"}


def test_gpuscribe_errors_carry_status_message_and_code(
    server: tuple[str, FakeService], tmp_path: Path
) -> None:
    url, _ = server
    with client(url) as api:
        with pytest.raises(ApiError) as info:
            api.task("nope")
        assert (info.value.status, info.value.code) == (404, "task_not_found")
        assert info.value.message == "no task nope"
        with pytest.raises(ApiError) as info:
            api.submit(make_wav(tmp_path / "full.wav"))
        assert info.value.status == 429
        assert "retry after 7 s" in info.value.message


def test_missing_key_is_explained(server: tuple[str, FakeService]) -> None:
    with client(server[0], key=None) as api, pytest.raises(ApiError) as info:
        api.gpus()
    assert info.value.status == 401
    assert "GPUSCRIBE_API_KEY" in info.value.message


def test_reads(server: tuple[str, FakeService]) -> None:
    with client(server[0]) as api:
        assert api.health() == {"status": "ok"}
        assert api.gpus() == GPUS
        assert "state" in api.queue()
        assert api.calibration() == {"rows": []}


def test_unreachable_server() -> None:
    with client(f"127.0.0.1:{free_port()}") as api, pytest.raises(ServerUnreachable) as info:
        api.health()
    assert "not running at http://127.0.0.1:" in info.value.message


def test_transcribe_writes_results_and_reports_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [make_wav(tmp_path / n) for n in ("one.wav", "fails.wav", "bad.wav")]
    out = tmp_path / "out"
    argv = [
        "transcribe",
        *map(str, files),
        "--format",
        "srt",
        "--output-dir",
        str(out),
        "--interval",
        "0.01",
    ]
    assert main(argv) == 1
    assert (out / "one.srt").read_text() == "[srt] hello from one.wav\n"
    assert not (out / "fails.srt").exists()
    captured = capsys.readouterr()
    assert str(out / "one.srt") in captured.out
    assert "fails.wav: failed: decoder exploded" in captured.err
    assert "bad.wav: failed: not accepted: bad.wav is not audio" in captured.err
    assert "one.wav: completed 100%" in captured.err  # plain progress lines: not a terminal


def test_transcribe_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = make_wav(tmp_path / "talk.wav")
    argv = [
        "transcribe",
        str(wav),
        "--format",
        "verbose_json",
        "--output-dir",
        str(tmp_path),
        "--interval",
        "0.01",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[0]["state"] == "completed"
    assert summary[0]["output"] == str(tmp_path / "talk.json")
    assert json.loads((tmp_path / "talk.json").read_text()) == {"text": "hello from talk.wav"}


def test_transcribe_refuses_colliding_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x").mkdir()
    first, second = make_wav(tmp_path / "a.wav"), make_wav(tmp_path / "x" / "a.wav")
    assert main(["transcribe", str(first), str(second), "--output-dir", str(tmp_path)]) == 1
    assert "would both write" in capsys.readouterr().err


def test_task_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(make_wav(tmp_path / "s.wav"))]) == 0
    task_id = capsys.readouterr().out.strip()
    assert task_id.startswith("task-")
    assert main(["status", task_id]) == 0
    assert re.search(r"^state\s+running$", capsys.readouterr().out, re.MULTILINE)
    assert main(["status", task_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "completed"
    assert main(["result", task_id, "--format", "vtt", "-o", str(tmp_path / "s.vtt")]) == 0
    assert (tmp_path / "s.vtt").read_text() == "[vtt] hello from s.wav\n"
    assert main(["tasks", "--state", "completed"]) == 0
    assert task_id in capsys.readouterr().out
    assert main(["cancel", task_id]) == 0
    assert capsys.readouterr().out.strip() == f"{task_id}: cancelled"


def test_result_json_format_case_and_subtitle_options(
    tmp_path: Path, server: tuple[str, FakeService], capsys: pytest.CaptureFixture[str]
) -> None:
    fake = server[1]
    assert main(["submit", str(make_wav(tmp_path / "r.wav"))]) == 0
    task_id = capsys.readouterr().out.strip()
    for _ in range(2):
        assert main(["status", task_id]) == 0
    capsys.readouterr()
    assert main(["result", task_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"text": "hello from r.wav"}
    assert fake.result_queries[-1] == {"format": "verbose_json"}
    argv = ["result", task_id, "--format", "SRT", "--max-line-width", "30", "--max-line-count", "1"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "[srt] hello from r.wav\n"
    assert fake.result_queries[-1] == {
        "format": "srt", "max_line_width": "30", "max_line_count": "1",
    }  # fmt: skip


def test_server_url_may_end_in_v1(
    server: tuple[str, FakeService], capsys: pytest.CaptureFixture[str]
) -> None:
    """The base URL an OpenAI client is given (`…/v1`) works as --server too."""
    assert main(["tasks", "--json", "--server", f"{server[0]}/v1/"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and isinstance(json.loads(captured.out), list)


def test_bad_format_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["result", "x", "--format", "docx"])
    assert exit_info.value.code == 2
    assert "invalid format 'docx'" in capsys.readouterr().err


def test_server_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "missing"]) == 1
    assert capsys.readouterr().err == "gpuscribe: no task missing\n"


def test_gpus_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert "Simulated GPU 24GiB" in out
    assert "3.0 / 2.0 / 21.0 GiB" in out
    assert "used high" in out.splitlines()[3]  # the warned GPU's row
    assert out.rstrip().splitlines()[-1].startswith("WARNING GPU [1] since ")
    assert "passed the warning level of 80%; no new task is placed on it" in out
    assert main(["gpus", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"gpus": GPUS}


def interrupt_the_second_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """`time.sleep` records its seconds and is interrupted (Ctrl-C) at its second call: a
    `--watch` draws twice. The recorded seconds."""
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    return sleeps


def test_gpus_watch_redraws_until_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sleeps = interrupt_the_second_sleep(monkeypatch)
    assert main(["gpus", "--watch", "0.5", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert sleeps == [0.5, 0.5]


def test_gpus_watch_shows_the_memory_warning_on_every_redraw(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    interrupt_the_second_sleep(monkeypatch)
    assert main(["gpus", "--watch", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("WARNING GPU [1] since ") for line in lines) == 2


def test_transport_failures_and_error_answers_are_siblings() -> None:
    with client(f"127.0.0.1:{free_port()}") as api, pytest.raises(ClientError) as info:
        api.health()
    assert isinstance(info.value, ServerUnreachable) and not isinstance(info.value, ApiError)
