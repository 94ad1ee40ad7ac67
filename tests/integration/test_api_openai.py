"""The official `openai` client, unchanged, against a real uvicorn server on a free port."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from api_backend import (
    TEST_TEXT,
    ApiTestBackend,
    Completer,
    make_app,
    sample_transcript,
    serve_in_thread,
)
from openai.types.audio import Transcription, TranslationVerbose

from gpuscribe.api import routes_openai
from gpuscribe.api.app import create_app
from gpuscribe.config import Settings
from gpuscribe.domain import Task, TaskState
from gpuscribe.store.base import Claim
from support.audio import AudioSet

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSet:
    return AudioSet(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiTestBackend, str]]:
    data = tmp_path_factory.mktemp("data")
    backend, app = make_app(str(data), api_keys=(KEY,), task_timeout_seconds=1.0)
    with serve_in_thread(app) as url:
        yield backend, url


@pytest.fixture(scope="module")
def backend(server: tuple[ApiTestBackend, str]) -> ApiTestBackend:
    return server[0]


@pytest.fixture
def completer(backend: ApiTestBackend) -> Iterator[Completer]:
    with Completer(backend) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: tuple[ApiTestBackend, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server[1]}/v1", api_key=KEY) as oai:
        yield oai


def test_json(client: openai.OpenAI, audio: AudioSet, completer: Completer) -> None:
    with audio.speech(0, "mp3").path.open("rb") as file:
        result = client.audio.transcriptions.create(model="whisper-1", file=file)
    assert result.text == TEST_TEXT


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats(
    client: openai.OpenAI, audio: AudioSet, completer: Completer, fmt: Literal["text", "srt", "vtt"]
) -> None:
    with audio.speech(1, "flac").path.open("rb") as file:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=file,
            response_format=fmt,
        )
    assert isinstance(result, str)
    expected = {
        "text": TEST_TEXT + "\n",
        "srt": "1\n00:00:00,000 --> 00:00:01,500\nHello from gpuscribe.\n",
        "vtt": "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello from gpuscribe.\n",
    }[fmt]
    assert result.startswith(expected)


def test_verbose_json_with_words(
    client: openai.OpenAI, backend: ApiTestBackend, audio: AudioSet, completer: Completer
) -> None:
    with audio.speech(2, "ogg").path.open("rb") as file:
        result = client.audio.transcriptions.create(
            model="tiny.en",
            file=file,
            response_format="verbose_json",
            language="en",
            prompt="Weather.",
            temperature=0.2,
            timestamp_granularities=["word", "segment"],
        )
    assert result.text == TEST_TEXT and result.language == "en"
    assert result.duration > 5.0
    assert result.segments is not None and result.segments[1].start == 2.0
    assert result.segments[0].tokens == [1, 2]
    assert result.words is not None and result.words[0].word == " Hello"
    options = backend.submitted[-1].options
    assert options.word_timestamps and options.initial_prompt == "Weather."
    assert options.temperature == 0.2 and options.language == "en"


def test_verbose_json_segments_by_default(
    client: openai.OpenAI, audio: AudioSet, completer: Completer
) -> None:
    with audio.speech(0).path.open("rb") as file:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=file, response_format="verbose_json"
        )
    assert result.segments is not None and len(result.segments) == 2
    assert result.words is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("fmt", ["json", "verbose_json", "text"])
def test_translations(
    client: openai.OpenAI,
    backend: ApiTestBackend,
    audio: AudioSet,
    completer: Completer,
    fmt: Literal["json", "verbose_json", "text"],
) -> None:
    with audio.speech(3).path.open("rb") as file:
        result = client.audio.translations.create(
            model="whisper-1",
            file=file,
            response_format=fmt,
        )
    text = result if isinstance(result, str) else result.text
    assert text.strip() == TEST_TEXT
    assert backend.submitted[-1].options.task.value == "translate"
    if isinstance(result, TranslationVerbose):
        assert result.to_dict()["task"] == "translate"


def test_whisper_1_is_the_default_model(
    client: openai.OpenAI, backend: ApiTestBackend, audio: AudioSet, completer: Completer
) -> None:
    with audio.speech(0).path.open("rb") as file:
        client.audio.transcriptions.create(model="whisper-1", file=file)
    assert backend.submitted[-1].options.model == backend.settings.default_model
    assert backend.submitted[-1].priority.label == "normal"


@pytest.mark.parametrize("model", ["banana", "gpt-4o-transcribe", "large-v3"])
def test_unknown_or_unavailable_model_is_404_model_not_found(
    client: openai.OpenAI, audio: AudioSet, model: str
) -> None:
    with audio.speech(0).path.open("rb") as file, pytest.raises(openai.NotFoundError) as err:
        client.audio.transcriptions.create(model=model, file=file)
    assert err.value.code == "model_not_found"


def test_bad_audio_is_422(client: openai.OpenAI, audio: AudioSet) -> None:
    with (
        audio.text_as_wav().open("rb") as file,
        pytest.raises(openai.UnprocessableEntityError) as err,
    ):
        client.audio.transcriptions.create(model="whisper-1", file=file)
    assert "not an audio file" in str(err.value)


def test_failed_task_is_500_and_not_retried(
    client: openai.OpenAI, backend: ApiTestBackend, audio: AudioSet
) -> None:
    before = len(backend.submitted)
    with (
        Completer(backend, outcome=lambda task: "decoder exploded"),
        audio.speech(0).path.open("rb") as file,
        pytest.raises(openai.InternalServerError) as err,
    ):
        client.audio.transcriptions.create(model="whisper-1", file=file)
    assert "decoder exploded" in str(err.value)
    assert len(backend.submitted) == before + 1  # x-should-retry: false was obeyed


def test_timeout_is_504_naming_the_task(
    client: openai.OpenAI, backend: ApiTestBackend, audio: AudioSet
) -> None:
    before = len(backend.submitted)
    with audio.speech(0).path.open("rb") as file, pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(model="whisper-1", file=file)
    assert err.value.status_code == 504
    assert "GET /v1/tasks/" in str(err.value)
    assert len(backend.submitted) == before + 1
    backend.cancel(backend.store.list_tasks(limit=1)[0].id)


def test_client_hanging_up_cancels_its_task(tmp_path: Path, audio: AudioSet) -> None:
    backend, app = make_app(str(tmp_path / "data"), task_timeout_seconds=60.0)
    files = {"file": ("a.wav", audio.speech(0).path.read_bytes())}
    with serve_in_thread(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/audio/transcriptions", files=files, timeout=0.5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            (task,) = backend.store.list_tasks()
            if task.state.value == "cancelled":
                break
            time.sleep(0.05)
    assert task.state.value == "cancelled"


def test_models_list(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "whisper-1" in ids and "tiny.en" in ids


def test_wrong_key_is_rejected(server: tuple[ApiTestBackend, str], audio: AudioSet) -> None:
    with (
        openai.OpenAI(base_url=f"{server[1]}/v1", api_key="sk-wrong") as bad,
        audio.speech(0).path.open("rb") as file,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.audio.transcriptions.create(model="whisper-1", file=file)


def test_healthz_open_without_key(server: tuple[ApiTestBackend, str]) -> None:
    assert httpx.get(f"{server[1]}/healthz").status_code == 200
    assert httpx.get(f"{server[1]}/v1/queue").status_code == 401


def test_audio_is_durable_in_the_audio_dir(backend: ApiTestBackend) -> None:
    paths = [Path(new.audio_path) for new in backend.submitted]
    assert paths and all(p.parent == backend.settings.audio_dir for p in paths)
    assert not list(backend.settings.audio_dir.glob(".upload-*"))


# --- waiting for the task ---------------------------------------------------------------------
@dataclass
class CountingBackend(ApiTestBackend):
    """Counts the route's reads of each task."""

    reads: dict[str, int] = field(default_factory=dict)

    def task(self, task_id: str) -> Task | None:
        self.reads[task_id] = self.reads.get(task_id, 0) + 1
        return super().task(task_id)

    def only_task(self) -> Task:
        (task,) = self.store.list_tasks()
        return task


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[tuple[CountingBackend, openai.OpenAI]]:
    settings = Settings(data_dir=str(tmp_path / "data"), task_timeout_seconds=60.0).validate()
    settings.audio_dir.mkdir(parents=True)
    backend = CountingBackend(settings)
    with (
        serve_in_thread(create_app(backend)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as oai,
    ):
        yield backend, oai


def transcribe_in_background(
    pool: ThreadPoolExecutor, client: openai.OpenAI, audio: AudioSet
) -> Future[Transcription]:
    data = audio.speech(0).path.read_bytes()
    return pool.submit(client.audio.transcriptions.create, model="whisper-1", file=("a.wav", data))


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_the_answer_comes_when_the_node_signals_the_task_final(
    counting: tuple[CountingBackend, openai.OpenAI],
    audio: AudioSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the fallback read out of reach, only the node's signal can end the wait: the route
    reads the task once at first and once when signalled, however long the task runs."""
    backend, client = counting
    monkeypatch.setattr(routes_openai, "FALLBACK_READ_SECONDS", 3600.0)
    with ThreadPoolExecutor(1) as pool, Completer(backend) as completer:  # it stops first
        completer.hold.set()
        answer = transcribe_in_background(pool, client, audio)
        until(lambda: bool(backend.reads) and backend.only_task().state is TaskState.RUNNING)
        time.sleep(1.5)  # the task runs on; the route used to read it 30 times meanwhile
        assert backend.reads == {backend.only_task().id: 1}
        completer.hold.clear()
        assert answer.result().text == TEST_TEXT
    assert backend.reads == {backend.only_task().id: 2}


def test_a_task_finished_by_another_node_is_found_by_the_fallback_read(
    counting: tuple[CountingBackend, openai.OpenAI], audio: AudioSet
) -> None:
    """Another node of a cluster completes it through the store alone: no signal here."""
    backend, client = counting
    with ThreadPoolExecutor(1) as pool:
        answer = transcribe_in_background(pool, client, audio)
        until(lambda: bool(backend.reads))
        task = backend.only_task()
        claim = Claim(task.id, "node-b", 0, "GPU-sim-0", 400 * 1024**2, lease_seconds=60)
        claimed = backend.store.claim(claim, now=time.time())
        assert claimed is not None and claimed.lease_token is not None
        transcript = sample_transcript(claimed)
        backend.store.complete(
            task.id, claimed.lease_token, transcript, peak_bytes=None, now=time.time()
        )
        assert answer.result().text == TEST_TEXT
    assert backend.reads[task.id] >= 2
