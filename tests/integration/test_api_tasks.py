"""gpuscribe's own endpoints over real HTTP semantics (TestClient), a real store, real audio."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_backend import TEST_TEXT, ApiTestBackend, Completer, make_app
from fastapi.testclient import TestClient

from gpuscribe.memory.types import CalibrationSample, ProfileKey
from support.audio import AudioSet

TASK_FIELDS = {
    "id",
    "state",
    "priority",
    "model",
    "engine",
    "gpu",
    "gpu_uuid",
    "progress",
    "audio_seconds",
    "memory_estimate_bytes",
    "memory_peak_bytes",
    "attempts",
    "max_attempts",
    "error",
    "wait_reason",
    "created_at",
    "started_at",
    "finished_at",
    "options",
}
GPU_FIELDS = {
    "index",
    "uuid",
    "name",
    "memory_total_bytes",
    "memory_used_bytes",
    "memory_reserved_bytes",
    "memory_cap_bytes",
    "tasks_running",
    "max_tasks",
    "utilization_percent",
    "temperature_c",
    "power_watts",
    "resident_models",
}


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSet:
    return AudioSet(tmp_path_factory.mktemp("audio"))


@pytest.fixture
def backend_app(tmp_path: Path) -> tuple[ApiTestBackend, TestClient]:
    backend, app = make_app(str(tmp_path / "data"))
    return backend, TestClient(app)


@pytest.fixture
def backend(backend_app: tuple[ApiTestBackend, TestClient]) -> ApiTestBackend:
    return backend_app[0]


@pytest.fixture
def client(backend_app: tuple[ApiTestBackend, TestClient]) -> TestClient:
    return backend_app[1]


@pytest.fixture
def completer(backend: ApiTestBackend) -> Iterator[Completer]:
    with Completer(backend) as running:
        yield running


def post(client: TestClient, path: Path, name: str | None = None, **fields: Any) -> Any:
    files = {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}
    data = {k: str(v) for k, v in fields.items()}
    headers = {}
    if "idempotency_key" in data:
        headers["Idempotency-Key"] = data.pop("idempotency_key")
    return client.post("/v1/tasks", files=files, data=data, headers=headers)


def wait_state(
    client: TestClient, task_id: str, state: str, timeout: float = 5.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        if task["state"] == state:
            return task
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached {state}")


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg"])
def test_submit_returns_202_task_and_location(
    client: TestClient, backend: ApiTestBackend, audio: AudioSet, fmt: str
) -> None:
    response = post(
        client,
        audio.speech(0, fmt).path,
        priority="high",
        language="EN",
        beam_size=3,
        word_timestamps="true",
        initial_prompt="Fox.",
    )
    assert response.status_code == 202, response.text
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert set(task) >= TASK_FIELDS
    assert task["state"] == "queued" and task["priority"] == "high" and task["gpu"] is None
    assert task["model"] == "tiny.en" and task["engine"] == "faster-whisper"
    assert task["created_at"].endswith("Z") and task["started_at"] is None
    assert 5.0 < task["audio_seconds"] < 15.0
    options = task["options"]
    assert options["language"] == "en" and options["beam_size"] == 3
    assert options["word_timestamps"] is True and options["initial_prompt"] == "Fox."
    stored = Path(backend.submitted[-1].audio_path)
    assert stored.parent == backend.settings.audio_dir and stored.is_file()
    assert stored.suffix in (".wav", ".flac", ".mp3", ".ogg")
    assert stored.read_bytes() == audio.speech(0, fmt).path.read_bytes()


def test_name_chosen_by_service_and_client_name_sanitised(
    client: TestClient, backend: ApiTestBackend, audio: AudioSet
) -> None:
    response = post(client, audio.speech(1, "mp3").path, name="../../etc/passwd.wav")
    assert response.status_code == 202, response.text
    assert response.json()["original_filename"] == "passwd.wav"
    stored = Path(backend.submitted[-1].audio_path)
    assert stored.parent == backend.settings.audio_dir
    assert stored.suffix == ".mp3"  # from the probed content, not the client's ".wav"
    assert "passwd" not in stored.name


def test_unicode_and_control_characters_in_filename(client: TestClient, audio: AudioSet) -> None:
    response = post(client, audio.speech(0).path, name="réunion\u202e 会議.wav")
    assert response.status_code == 202, response.text
    assert response.json()["original_filename"] == "réunion 会議.wav"
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="a\x07b\x1b[31m.wav"\r\n\r\n'
    ).encode()
    body = head + audio.speech(0).path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    raw = client.post("/v1/tasks", content=body, headers={"Content-Type": content_type})
    assert raw.status_code == 202, raw.text
    assert raw.json()["original_filename"] == "ab[31m.wav"
    long = post(client, audio.speech(0).path, name="a" * 1000 + ".wav")
    assert len(long.json()["original_filename"]) == 255


def test_get_task_has_history_and_timings(
    client: TestClient, audio: AudioSet, completer: Completer
) -> None:
    task_id = post(client, audio.speech(2).path).json()["id"]
    task = wait_state(client, task_id, "completed")
    assert [e["state"] for e in task["history"]] == ["queued", "running", "completed"]
    assert task["gpu"] == 0 and task["gpu_uuid"] == "GPU-sim-0"
    assert task["progress"] == 1.0 and task["attempts"] == 1
    assert task["memory_estimate_bytes"] == 400 * 1024**2
    assert task["memory_peak_bytes"] == 350 * 1024**2
    assert task["started_at"] >= task["created_at"] and task["finished_at"] >= task["started_at"]


def test_unknown_task_is_404(client: TestClient) -> None:
    for response in (
        client.get("/v1/tasks/nope"),
        client.get("/v1/tasks/nope/result"),
        client.delete("/v1/tasks/nope"),
    ):
        assert response.status_code == 404
        assert "nope" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fmt", "media", "check"),
    [
        ("json", "application/json", lambda body: body == f'{{"text":"{TEST_TEXT}"}}'),
        ("verbose_json", "application/json", lambda body: '"segments":[' in body),
        ("text", "text/plain", lambda body: body == TEST_TEXT + "\n"),
        ("srt", "text/plain", lambda body: body.startswith("1\n00:00:00,000 --> 00:00:01,500\n")),
        ("vtt", "text/vtt", lambda body: body.startswith("WEBVTT\n\n00:00:00.000 --> ")),
        ("tsv", "text/plain", lambda body: body.startswith("start\tend\ttext\n0\t1500\t")),
    ],
)
def test_result_formats(
    client: TestClient, audio: AudioSet, completer: Completer, fmt: str, media: str, check: Any
) -> None:
    task_id = post(client, audio.speech(0).path).json()["id"]
    wait_state(client, task_id, "completed")
    response = client.get(f"/v1/tasks/{task_id}/result", params={"format": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media)
    assert check(response.text), response.text


def test_verbose_json_has_words_when_asked(
    client: TestClient, audio: AudioSet, completer: Completer
) -> None:
    task_id = post(client, audio.speech(0).path, word_timestamps="true").json()["id"]
    wait_state(client, task_id, "completed")
    body = client.get(f"/v1/tasks/{task_id}/result?format=verbose_json").json()
    assert body["words"][0] == {"word": " Hello", "start": 0.0, "end": 0.5}


def test_result_of_unknown_format_is_400(client: TestClient) -> None:
    response = client.get("/v1/tasks/x/result", params={"format": "docx"})
    assert response.status_code == 400
    assert "format" in response.json()["error"]["message"]


def test_result_while_queued_or_running_is_409(
    client: TestClient, audio: AudioSet, completer: Completer
) -> None:
    completer.paused.set()
    task_id = post(client, audio.speech(0).path).json()["id"]
    response = client.get(f"/v1/tasks/{task_id}/result")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "task_not_ready"
    assert "queued" in response.json()["error"]["message"]
    completer.hold.set()
    completer.paused.clear()
    wait_state(client, task_id, "running")
    running = client.get(f"/v1/tasks/{task_id}/result").json()["error"]["message"]
    assert "running (50% done)" in running
    completer.hold.clear()
    wait_state(client, task_id, "completed")
    assert client.get(f"/v1/tasks/{task_id}/result").status_code == 200


def test_result_of_failed_task_is_its_error(
    client: TestClient, backend: ApiTestBackend, audio: AudioSet
) -> None:
    with Completer(backend, outcome=lambda task: "the decoder crashed"):
        task_id = post(client, audio.speech(0).path).json()["id"]
        task = wait_state(client, task_id, "failed")
    assert task["error"] == "the decoder crashed"
    response = client.get(f"/v1/tasks/{task_id}/result")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "task_failed"
    assert "the decoder crashed" in response.json()["error"]["message"]


def test_cancel_queued_running_and_final(
    client: TestClient, audio: AudioSet, completer: Completer
) -> None:
    completer.paused.set()
    queued = post(client, audio.speech(0).path).json()["id"]
    response = client.delete(f"/v1/tasks/{queued}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert client.delete(f"/v1/tasks/{queued}").status_code == 200  # idempotent
    assert client.get(f"/v1/tasks/{queued}/result").json()["error"]["code"] == "task_cancelled"
    completer.hold.set()
    running = post(client, audio.speech(1).path).json()["id"]
    completer.paused.clear()
    wait_state(client, running, "running")
    response = client.delete(f"/v1/tasks/{running}")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    completer.hold.clear()
    done = post(client, audio.speech(2).path).json()["id"]
    wait_state(client, done, "completed")
    response = client.delete(f"/v1/tasks/{done}")
    assert response.status_code == 409 and "already completed" in response.text


def test_list_tasks_by_state_and_limit(
    client: TestClient, audio: AudioSet, completer: Completer
) -> None:
    completer.paused.set()
    ids = [post(client, audio.speech(0).path).json()["id"] for _ in range(3)]
    client.delete(f"/v1/tasks/{ids[0]}")
    listed = client.get("/v1/tasks").json()["tasks"]
    assert [t["id"] for t in listed] == ids[::-1]
    assert [t["id"] for t in client.get("/v1/tasks?limit=1").json()["tasks"]] == [ids[2]]
    cancelled = client.get("/v1/tasks", params={"state": "cancelled"}).json()["tasks"]
    assert [t["id"] for t in cancelled] == [ids[0]]
    assert client.get("/v1/tasks?limit=0").status_code == 400
    assert client.get("/v1/tasks?limit=abc").status_code == 400


def test_queue_counts_by_state_and_priority(client: TestClient, audio: AudioSet) -> None:
    for priority in ("urgent", "low", "LOW", "2"):
        assert post(client, audio.speech(0).path, priority=priority).status_code == 202
    body = client.get("/v1/queue").json()
    assert body["state"] == {"queued": 4, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    assert body["priority"] == {"urgent": 1, "high": 0, "normal": 1, "low": 2}
    assert body["queued"] == 4


def test_gpus_have_product_field_names(client: TestClient) -> None:
    gpus = client.get("/v1/gpus").json()["gpus"]
    assert len(gpus) == 2
    assert set(gpus[0]) >= GPU_FIELDS
    assert gpus[0]["memory_cap_bytes"] == int(gpus[0]["memory_total_bytes"] * 0.9)
    assert gpus[1]["index"] == 1 and gpus[0]["resident_models"] == ["tiny.en"]
    assert client.get("/v1/gpus?fresh=true").status_code == 200


def test_calibration_rows(client: TestClient, backend: ApiTestBackend) -> None:
    assert client.get("/v1/calibration").json() == {"calibration": []}
    key = ProfileKey("Simulated 24GiB", "faster-whisper", "tiny.en", "default", 1, 5)
    for working in (100, 300):
        backend.store.add_sample(CalibrationSample(key, working, None, None, time.time()))
    (row,) = client.get("/v1/calibration").json()["calibration"]
    assert row["model"] == "tiny.en" and row["gpu_name"] == "Simulated 24GiB"
    assert row["sample_count"] == 2 and row["max_working_bytes"] == 300
    assert row["mean_working_bytes"] == 200
    assert row["estimate"]["source"] == "prior"
    assert row["estimate"]["total_bytes"] == 380 * 1024**2


def test_healthz(client: TestClient, backend: ApiTestBackend) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    backend.is_healthy = False
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json() == {"status": "unhealthy"}


def test_metrics_refresh_queue_gauges(client: TestClient, audio: AudioSet) -> None:
    post(client, audio.speech(0).path, priority="urgent")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'gpuscribe_queue_tasks{priority="urgent",state="queued"} 1.0' in text
    assert 'gpuscribe_queue_tasks{priority="any",state="completed"} 0.0' in text
    assert 'gpuscribe_submissions_total{outcome="accepted"} 1.0' in text


def test_models_list_openai_shape(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert "tiny.en" in ids and "whisper-1" in ids
    assert all(m["object"] == "model" for m in body["data"])
    assert client.get("/v1/models?engine=nope").status_code == 400


def test_idempotency_key_returns_the_same_task(
    client: TestClient, backend: ApiTestBackend, audio: AudioSet
) -> None:
    first = post(client, audio.speech(0).path, idempotency_key="abc-123")
    again = post(client, audio.speech(1).path, idempotency_key="abc-123")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    files = sorted(p.name for p in backend.settings.audio_dir.iterdir())
    assert files == [Path(backend.submitted[0].audio_path).name]  # the duplicate's file is gone
    other = post(client, audio.speech(0).path, idempotency_key="other")
    assert other.json()["id"] != first.json()["id"]


def test_a_repeated_key_is_answered_without_storing_its_file(
    client: TestClient, backend: ApiTestBackend, audio: AudioSet, tmp_path: Path
) -> None:
    first = post(client, audio.speech(0).path, idempotency_key="seen")
    not_audio = tmp_path / "notes.txt"
    not_audio.write_bytes(b"not audio at all " * 100_000)  # over a write batch; never probed
    again = post(client, not_audio, idempotency_key="seen")
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(backend.submitted) == 1
    files = sorted(p.name for p in backend.settings.audio_dir.iterdir())
    assert files == [Path(backend.submitted[0].audio_path).name]


def test_full_queue_is_429_with_retry_after(tmp_path: Path, audio: AudioSet) -> None:
    backend, app = make_app(str(tmp_path / "data"), max_queue_length=1)
    client = TestClient(app)
    assert post(client, audio.speech(0).path).status_code == 202
    response = post(client, audio.speech(0).path)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert len(list(backend.settings.audio_dir.iterdir())) == 1  # the rejected file is gone


def test_auth_on(tmp_path: Path, audio: AudioSet) -> None:
    _, app = make_app(str(tmp_path / "data"), api_keys=("s3cret",))
    client = TestClient(app)
    assert client.get("/healthz").status_code == 200
    for path in ("/v1/tasks", "/v1/queue", "/v1/gpus", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 401, path
    assert post(client, audio.speech(0).path).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/queue", headers=good).status_code == 200
    assert client.get("/v1/queue", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/v1/queue", headers={"X-API-Key": "wrong"}).status_code == 401
    schema = client.get("/openapi.json", headers=good).json()
    assert "bearer" in schema["components"]["securitySchemes"]


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/result",
        "/v1/queue",
        "/v1/gpus",
        "/v1/calibration",
        "/healthz",
        "/metrics",
        "/v1/models",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    ):
        assert path in paths, path
    body = paths["/v1/tasks"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and "priority" in body["properties"]
    assert "HTTPValidationError" not in str(schema)
    assert "securitySchemes" not in schema["components"]
