"""Bad input of every kind gets a 4xx JSON error that says what is wrong, leaves no file behind,
and the service keeps serving."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from api_backend import ApiTestBackend, make_app
from fastapi.testclient import TestClient

from support.audio import AudioSet

BOUNDARY = "gpuscribe-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSet:
    return AudioSet(tmp_path_factory.mktemp("audio"))


@pytest.fixture
def backend_client(tmp_path: Path) -> tuple[ApiTestBackend, TestClient]:
    backend, app = make_app(str(tmp_path / "data"))
    return backend, TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(backend_client: tuple[ApiTestBackend, TestClient]) -> TestClient:
    return backend_client[1]


@pytest.fixture
def backend(backend_client: tuple[ApiTestBackend, TestClient]) -> ApiTestBackend:
    return backend_client[0]


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["message"]
    return error


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def body(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def post_raw(client: TestClient, content: bytes, path: str = "/v1/tasks") -> Any:
    return client.post(path, content=content, headers={"Content-Type": MULTIPART})


def post_file(client: TestClient, data: bytes, name: str = "a.wav", **fields: str) -> Any:
    return client.post("/v1/tasks", files={"file": (name, data)}, data=fields)


def assert_serving_and_clean(client: TestClient, backend: ApiTestBackend, audio: AudioSet) -> None:
    leftovers = list(backend.settings.audio_dir.glob(".upload-*"))
    assert leftovers == []
    assert post_file(client, audio.speech(0).path.read_bytes()).status_code == 202


@pytest.mark.parametrize(
    ("maker", "status", "words"),
    [
        ("text_as_wav", 422, "not an audio file"),
        ("random_bytes", 422, "audio"),
        ("empty", 422, "empty"),
        ("truncated_mp3", 422, ""),
        ("truncated_flac", 422, ""),
    ],
)
def test_bad_audio_is_422(
    client: TestClient,
    backend: ApiTestBackend,
    audio: AudioSet,
    maker: str,
    status: int,
    words: str,
) -> None:
    files: dict[str, Callable[[], Path]] = {
        "text_as_wav": audio.text_as_wav,
        "random_bytes": audio.random_bytes,
        "empty": audio.empty,
        "truncated_mp3": lambda: audio.truncated("mp3"),
        "truncated_flac": lambda: audio.truncated("flac"),
    }
    error = error_of(post_file(client, files[maker]().read_bytes()), status)
    assert words in error["message"]
    assert error["param"] == "file"
    assert list(backend.settings.audio_dir.iterdir()) == []
    assert_serving_and_clean(client, backend, audio)


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"model": "gpt-17"}, "model", "unknown model 'gpt-17'"),
        ({"model": "large-v3"}, "model", "not available"),
        ({"engine": "sphinx"}, "engine", "unknown engine"),
        ({"priority": "asap"}, "priority", "invalid priority"),
        ({"task": "summarise"}, "task", "'transcribe' or 'translate'"),
        ({"beam_size": "0"}, "beam_size", "greater than or equal to 1"),
        ({"beam_size": "many"}, "beam_size", "integer"),
        ({"batch_size": "65"}, "batch_size", "less than or equal to 64"),
        ({"word_timestamps": "perhaps"}, "word_timestamps", "boolean"),
        ({"language": "../x"}, "language", "pattern"),
        ({"initial_prompt": "x" * 5000}, "initial_prompt", "at most 4096"),
        ({"colour": "blue"}, "colour", "unknown form field 'colour'"),
    ],
)
def test_bad_form_values_are_400(
    client: TestClient,
    backend: ApiTestBackend,
    audio: AudioSet,
    fields: dict[str, str],
    param: str,
    words: str,
) -> None:
    error = error_of(post_file(client, audio.speech(0).path.read_bytes(), **fields), 400)
    assert error["param"] == param
    assert words in error["message"], error["message"]
    assert list(backend.settings.audio_dir.iterdir()) == []
    assert_serving_and_clean(client, backend, audio)


def test_missing_file_is_400(client: TestClient, backend: ApiTestBackend, audio: AudioSet) -> None:
    error = error_of(post_raw(client, body(part("model", b"tiny.en"))), 400)
    assert error["param"] == "file" and "missing form field 'file'" in error["message"]
    assert_serving_and_clean(client, backend, audio)


def test_file_in_wrong_field_and_two_files_are_400(client: TestClient, audio: AudioSet) -> None:
    data = audio.speech(0).path.read_bytes()
    error = error_of(post_raw(client, body(part("audio", data, "a.wav"))), 400)
    assert "'audio'" in error["message"]
    error = error_of(post_raw(client, body(part("file", data, "a"), part("file", data, "b"))), 400)
    assert "more than one" in error["message"]


def test_repeated_field_is_400(client: TestClient, audio: AudioSet) -> None:
    data = audio.speech(0).path.read_bytes()
    content = body(part("file", data, "a.wav"), part("model", b"tiny"), part("model", b"base"))
    assert "more than once" in error_of(post_raw(client, content), 400)["message"]


def test_huge_form_field_is_400(
    client: TestClient, backend: ApiTestBackend, audio: AudioSet
) -> None:
    content = body(part("initial_prompt", b"x" * 200_000), part("file", b"RIFF", "a.wav"))
    error = error_of(post_raw(client, content), 400)
    assert error["param"] == "initial_prompt" and "longer than" in error["message"]
    assert_serving_and_clean(client, backend, audio)


def test_non_utf8_field_is_400(client: TestClient) -> None:
    content = body(part("language", b"\xff\xfe"), part("file", b"x", "a.wav"))
    assert "UTF-8" in error_of(post_raw(client, content), 400)["message"]


def test_malformed_multipart_is_400(
    client: TestClient, backend: ApiTestBackend, audio: AudioSet
) -> None:
    garbage = post_raw(client, b"this is not multipart at all")
    assert "malformed multipart" in error_of(garbage, 400)["message"]
    data = audio.speech(0).path.read_bytes()
    cut = post_raw(client, body(part("file", data, "a.wav"), close=False)[:-100])
    assert "closing boundary" in error_of(cut, 400)["message"]
    no_boundary = client.post(
        "/v1/tasks", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    assert "boundary" in error_of(no_boundary, 400)["message"]
    no_name = post_raw(client, f"--{BOUNDARY}\r\nX: y\r\n\r\nab\r\n--{BOUNDARY}--\r\n".encode())
    assert "no field name" in error_of(no_name, 400)["message"]
    assert_serving_and_clean(client, backend, audio)


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post("/v1/tasks", json={"file": "x"})
    assert "multipart/form-data" in error_of(response, 415)["message"]
    response = client.post("/v1/audio/transcriptions", content=b"RIFF....")
    error_of(response, 415)


def test_upload_too_large_is_413(tmp_path: Path, audio: AudioSet) -> None:
    backend, app = make_app(str(tmp_path / "data"), max_upload_bytes=50_000)
    client = TestClient(app)
    big = audio.speech(0).path.read_bytes()
    assert len(big) > 50_000
    error = error_of(post_file(client, big), 413)
    assert "max_upload_bytes" in error["message"] and "50000" in error["message"]
    assert list(backend.settings.audio_dir.iterdir()) == []
    declared = client.post(
        "/v1/tasks",
        content=b"x",
        headers={"Content-Type": MULTIPART, "Content-Length": str(10**12)},
    )
    assert declared.status_code == 413


def test_audio_too_long_is_413_naming_the_limit(tmp_path: Path, audio: AudioSet) -> None:
    backend, app = make_app(str(tmp_path / "data"), max_audio_seconds=2.0)
    client = TestClient(app)
    error = error_of(post_file(client, audio.speech(0).path.read_bytes()), 413)
    assert "max_audio_seconds" in error["message"] and "2 s" in error["message"]
    assert list(backend.settings.audio_dir.iterdir()) == []


def test_bad_idempotency_key_is_400(client: TestClient, audio: AudioSet) -> None:
    response = client.post(
        "/v1/tasks",
        files={"file": ("a.wav", audio.speech(0).path.read_bytes())},
        headers={"Idempotency-Key": "x" * 300},
    )
    assert error_of(response, 400)["param"] == "Idempotency-Key"


def test_unknown_route_and_method(client: TestClient) -> None:
    assert error_of(client.get("/v2/nothing"), 404)["type"] == "not_found_error"
    response = client.put("/v1/queue")
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET"
    both = client.request("OPTIONS", "/v1/tasks")
    assert error_of(both, 405)["code"] == "method_not_allowed"
    assert both.headers["allow"] == "GET, POST"


def test_internal_error_is_500_without_internals(
    client: TestClient, backend: ApiTestBackend, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*, fresh: bool = False) -> Any:
        raise RuntimeError("secret path /srv/internal/db password=hunter2")

    backend.devices = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="gpuscribe.api.errors"):
        response = client.get("/v1/gpus")
    error = error_of(response, 500)
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert error["type"] == "server_error"
    assert "hunter2" in caplog.text  # the traceback is logged for the operator
    assert client.get("/v1/queue").status_code == 200
