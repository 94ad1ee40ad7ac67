"""Which model and language a request gets, and the 4xx answers when it cannot have them: the
OpenAI endpoints (404 `model_not_found`, OpenAI's shape) and `/v1/tasks` (400 naming the field).
Real app over HTTP (TestClient), real store, a real WAV made here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_backend import ApiTestBackend, Completer, make_app
from fastapi.testclient import TestClient
from tone import tone_wav

OPENAI = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return tone_wav(tmp_path_factory.mktemp("audio") / "tone.wav").read_bytes()


def _app(tmp_path: Path, **settings: Any) -> tuple[ApiTestBackend, TestClient]:
    backend, app = make_app(str(tmp_path / "data"), task_timeout_seconds=5.0, **settings)
    return backend, TestClient(app)


@pytest.fixture
def cpu(tmp_path: Path) -> Iterator[tuple[ApiTestBackend, TestClient]]:
    """A server as on a CPU machine: only the bundled tiny.en is available."""
    backend, client = _app(tmp_path)
    with Completer(backend):
        yield backend, client


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[tuple[ApiTestBackend, TestClient]]:
    """A server on simulated GPUs: every known model is available."""
    backend, client = _app(tmp_path, simulate_gpus="2x24GiB")
    with Completer(backend):
        yield backend, client


def post(client: TestClient, path: str, wav: bytes, **fields: Any) -> Any:
    files = {"file": ("tone.wav", wav, "audio/wav")}
    return client.post(path, files=files, data={k: str(v) for k, v in fields.items()})


def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


# --- models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["banana", "largev3", "gpt-4o-transcribe", "large-v4"])
def test_openai_unknown_model_is_404_model_not_found(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes, model: str
) -> None:
    backend, client = cpu
    response = post(client, OPENAI, wav, model=model)
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert model in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert backend.submitted == []


@pytest.mark.parametrize("model", ["whisper-large-v3", "openai/whisper-large-v3", "large-v3"])
def test_openai_model_this_server_lacks_is_404(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes, model: str
) -> None:
    response = post(cpu[1], OPENAI, wav, model=model)
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"
    assert "large-v3" in error_of(response)["message"]


def test_openai_whisper_1_is_the_default_model(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes
) -> None:
    backend, client = cpu
    response = post(client, OPENAI, wav, model="whisper-1")
    assert response.status_code == 200
    assert backend.submitted[-1].options.model == backend.settings.default_model


@pytest.mark.parametrize(
    ("model", "canonical"),
    [
        ("openai/whisper-large-v3", "large-v3"),
        ("Systran/faster-whisper-large-v3", "large-v3"),
        ("deepdml/faster-whisper-large-v3-turbo-ct2", "large-v3-turbo"),
        ("openai/whisper-tiny.en", "tiny.en"),
    ],
)
def test_openai_names_of_other_servers_resolve(
    simulated: tuple[ApiTestBackend, TestClient], wav: bytes, model: str, canonical: str
) -> None:
    backend, client = simulated
    response = post(client, OPENAI, wav, model=model)
    assert response.status_code == 200, response.text
    assert backend.submitted[-1].options.model == canonical


def test_tasks_accept_names_of_other_servers(
    simulated: tuple[ApiTestBackend, TestClient], wav: bytes
) -> None:
    client = simulated[1]
    response = post(client, "/v1/tasks", wav, model="Systran/faster-whisper-large-v3")
    assert response.status_code == 202, response.text
    assert response.json()["model"] == "large-v3"


def test_openai_bad_engine_is_400_naming_it(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes
) -> None:
    response = post(cpu[1], OPENAI, wav, engine="whisper-cpp")
    assert response.status_code == 400
    assert error_of(response)["param"] == "engine"


# --- languages ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [OPENAI, "/v1/tasks"])
def test_language_an_english_only_model_cannot_do_is_400(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes, path: str
) -> None:
    backend, client = cpu
    response = post(client, path, wav, language="fr")
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "language"
    assert "English-only" in error["message"]
    assert backend.submitted == []


@pytest.mark.parametrize("path", [OPENAI, "/v1/tasks"])
@pytest.mark.parametrize("fixture", ["cpu", "simulated"])
def test_unknown_language_is_400_everywhere(
    request: pytest.FixtureRequest, wav: bytes, path: str, fixture: str
) -> None:
    client = request.getfixturevalue(fixture)[1]
    response = post(client, path, wav, language="xx-notalang")
    assert response.status_code == 400
    assert error_of(response)["param"] == "language"
    assert "xx-notalang" in error_of(response)["message"]


@pytest.mark.parametrize("path", [OPENAI, "/v1/tasks"])
def test_language_names_are_accepted(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes, path: str
) -> None:
    backend, client = cpu
    response = post(client, path, wav, language="English")
    assert response.status_code in (200, 202), response.text
    assert backend.submitted[-1].options.language == "en"


def test_multilingual_model_takes_other_languages(
    simulated: tuple[ApiTestBackend, TestClient], wav: bytes
) -> None:
    backend, client = simulated
    response = post(client, "/v1/tasks", wav, model="large-v3", language="german")
    assert response.status_code == 202, response.text
    assert backend.submitted[-1].options.language == "de"


# --- gpuscribe's fields on the OpenAI endpoints --------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", "asap"),
        ("beam_size", "0"),
        ("beam_size", "many"),
        ("batch_size", "65"),
        ("compute_type", "Float 16"),
        ("vad_filter", "perhaps"),
        ("task", "summarize"),
        ("temperature", "2"),
        ("response_format", "docx"),
    ],
)
@pytest.mark.parametrize("path", [OPENAI, "/v1/tasks"])
def test_bad_gpuscribe_fields_are_400_naming_them(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes, path: str, field: str, value: str
) -> None:
    if path == "/v1/tasks" and field == "response_format":
        pytest.skip("a field of the OpenAI endpoints only")
    backend, client = cpu
    response = post(client, path, wav, **{field: value})
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == field
    assert backend.submitted == []


def test_openai_task_must_match_the_endpoint(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes
) -> None:
    response = post(cpu[1], OPENAI, wav, task="translate")
    assert response.status_code == 400
    assert error_of(response)["param"] == "task"
    assert "/v1/audio/translations" in error_of(response)["message"]


def test_openai_gpuscribe_fields_are_used(
    cpu: tuple[ApiTestBackend, TestClient], wav: bytes
) -> None:
    backend, client = cpu
    response = post(
        client, OPENAI, wav, priority="high", beam_size="2", vad_filter="true", task="transcribe"
    )
    assert response.status_code == 200, response.text
    new = backend.submitted[-1]
    assert new.priority.label == "high"
    assert new.options.beam_size == 2
    assert new.options.vad_filter is True
