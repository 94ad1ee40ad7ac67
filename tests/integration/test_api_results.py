"""Results as subtitles and in any-case format names: `GET /v1/tasks/{id}/result` (query
parameters) and the OpenAI endpoints (form fields). Real app (TestClient), real store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_backend import ApiTestBackend, Completer, make_app
from fastapi.testclient import TestClient
from tone import tone_wav

from gpuscribe.domain import Segment, Task, Transcript
from gpuscribe.store.base import Claim

LONG = (
    "The quick brown fox jumps over the lazy dog near the river bank while seven children "
    "walked home from school on a cold and windy afternoon in the late autumn."
)


def long_transcript(task: Task) -> Transcript:
    """One long segment, and a last one that ends after the audio (as Whisper's may)."""
    end = task.audio_seconds + 0.1
    segments = (Segment(0, 0.0, 0.6, " " + LONG), Segment(1, 0.6, end, " The end."))
    return Transcript(LONG + " The end.", "en", task.audio_seconds, segments)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[ApiTestBackend, TestClient]]:
    backend, application = make_app(str(tmp_path / "data"), task_timeout_seconds=5.0)
    with Completer(backend, outcome=long_transcript):
        yield backend, TestClient(application)


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return tone_wav(tmp_path_factory.mktemp("audio") / "tone.wav", seconds=1.5).read_bytes()


def completed_task(client: TestClient, wav: bytes) -> str:
    response = client.post("/v1/tasks", files={"file": ("a.wav", wav, "audio/wav")})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    for _ in range(500):
        if client.get(f"/v1/tasks/{task_id}").json()["state"] == "completed":
            return task_id
        time.sleep(0.01)
    raise AssertionError("the task never completed")


def cues(srt: str) -> list[list[str]]:
    return [block.split("\n") for block in srt.strip().split("\n\n")]


def test_srt_lines_default_to_42_characters_and_2_lines(
    app: tuple[ApiTestBackend, TestClient], wav: bytes
) -> None:
    client = app[1]
    task_id = completed_task(client, wav)
    srt = client.get(f"/v1/tasks/{task_id}/result", params={"format": "srt"}).text
    blocks = cues(srt)
    assert len(blocks) > 2
    for block in blocks:
        assert 1 <= len(block[2:]) <= 2
        assert all(len(line) <= 42 for line in block[2:])
    assert blocks[-1][1].endswith("--> 00:00:01,500")  # not after the 1.5 s of audio


@pytest.mark.parametrize("fmt", ["vtt", "srt"])
def test_line_width_and_count_query_parameters(
    app: tuple[ApiTestBackend, TestClient], wav: bytes, fmt: str
) -> None:
    client = app[1]
    task_id = completed_task(client, wav)
    params: dict[str, Any] = {"format": fmt, "max_line_width": 25, "max_line_count": 1}
    text = client.get(f"/v1/tasks/{task_id}/result", params=params).text
    lines = [line for line in text.splitlines() if line and "-->" not in line]
    lines = [line for line in lines if not line.isdigit() and line != "WEBVTT"]
    assert lines and all(len(line) <= 25 for line in lines)
    unlimited = {"format": fmt, "max_line_width": 0, "max_line_count": 0}
    assert LONG in client.get(f"/v1/tasks/{task_id}/result", params=unlimited).text


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_line_width": -1}, "max_line_width"),
        ({"max_line_count": "two"}, "max_line_count"),
        ({"format": "docx"}, "format"),
    ],
)
def test_bad_result_parameters_are_400_naming_them(
    app: tuple[ApiTestBackend, TestClient], wav: bytes, params: dict[str, Any], param: str
) -> None:
    client = app[1]
    task_id = completed_task(client, wav)
    response = client.get(f"/v1/tasks/{task_id}/result", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("fmt", ["SRT", "Vtt", " TEXT ", "Verbose_JSON"])
def test_format_names_are_case_insensitive(
    app: tuple[ApiTestBackend, TestClient], wav: bytes, fmt: str
) -> None:
    client = app[1]
    task_id = completed_task(client, wav)
    response = client.get(f"/v1/tasks/{task_id}/result", params={"format": fmt})
    assert response.status_code == 200, response.text
    openai = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav, "audio/wav")},
        data={"response_format": fmt},
    )
    assert openai.status_code == 200, openai.text


def test_openai_subtitle_fields(app: tuple[ApiTestBackend, TestClient], wav: bytes) -> None:
    client = app[1]
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav, "audio/wav")},
        data={"response_format": "srt", "max_line_width": "20", "max_line_count": "3"},
    )
    assert response.status_code == 200, response.text
    for block in cues(response.text):
        assert len(block[2:]) <= 3 and all(len(line) <= 20 for line in block[2:])
    bad = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav, "audio/wav")},
        data={"response_format": "srt", "max_line_width": "wide"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_line_width"


def test_a_retried_task_does_not_show_the_old_error_as_current(tmp_path: Path, wav: bytes) -> None:
    backend, application = make_app(str(tmp_path / "data"))
    client = TestClient(application)
    response = client.post("/v1/tasks", files={"file": ("a.wav", wav, "audio/wav")})
    task_id = response.json()["id"]
    claim = Claim(task_id, "node", 0, "cpu", 1 << 20, lease_seconds=60)
    claimed = backend.store.claim(claim, now=time.time())
    assert claimed is not None and claimed.lease_token is not None
    backend.store.fail(
        task_id, claimed.lease_token, "worker stopped", retry_at=time.time(), now=time.time()
    )
    queued = client.get(f"/v1/tasks/{task_id}").json()
    assert queued["state"] == "queued"
    assert queued["error"] is None
    assert queued["last_error"] == "worker stopped"
    claimed = backend.store.claim(claim, now=time.time() + 1)
    assert claimed is not None and claimed.lease_token is not None
    backend.store.fail(task_id, claimed.lease_token, "bad audio", retry_at=None, now=time.time())
    failed = client.get(f"/v1/tasks/{task_id}").json()
    assert (failed["state"], failed["error"], failed["last_error"]) == ("failed", "bad audio", None)
