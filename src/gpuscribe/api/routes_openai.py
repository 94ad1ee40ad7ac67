"""OpenAI-compatible `POST /v1/audio/transcriptions` and `/v1/audio/translations`.

They take OpenAI's form fields, submit a normal-priority task and wait for it (woken by the node
when it is final, without blocking the event loop, up to `settings.task_timeout_seconds`), then
answer in OpenAI's shapes, so the official `openai` client works unchanged. `whisper-1` means
the default model; an unknown model is OpenAI's 404 `model_not_found`. gpuscribe's own fields
(priority, beam_size, ...) are validated as on `/v1/tasks`. Answers that a retry cannot mend
carry `x-should-retry: false`, which the OpenAI client obeys (a retry would upload the audio again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from functools import partial

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from gpuscribe.api import formats
from gpuscribe.api.backend import Backend
from gpuscribe.api.errors import ApiError
from gpuscribe.api.form_values import parse_form, resolve_model_name
from gpuscribe.api.routes_tasks import BackendDep, error_responses
from gpuscribe.api.schemas import OpenAIForm, OpenAITranscription, multipart_schema
from gpuscribe.api.submission import Submission, accept
from gpuscribe.config import Settings
from gpuscribe.domain import (
    InvalidRequest,
    Priority,
    Task,
    TaskKind,
    TaskState,
    TranscriptionOptions,
)
from gpuscribe.languages import check_language

log = logging.getLogger(__name__)

FALLBACK_READ_SECONDS = 0.5  # how late a task finished on another node may be seen
DISCONNECT_CHECK_SECONDS = 1.0
GRANULARITIES = "timestamp_granularities[]"
NO_RETRY = {"x-should-retry": "false"}
DEFAULT_MODEL_NAMES = frozenset({"whisper-1"})

router = APIRouter(tags=["openai"])

_RESPONSES = {
    200: {
        "description": "json/verbose_json: JSON; text, srt, vtt: plain text.",
        "model": OpenAITranscription,
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    **error_responses(400, 401, 404, 409, 413, 415, 422, 429, 500, 504),
}


@router.post(
    "/v1/audio/transcriptions",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={"requestBody": multipart_schema(OpenAIForm)},
)
async def transcriptions(request: Request, backend: BackendDep) -> Response:
    """Transcribe audio in its language (OpenAI-compatible)."""
    return await _serve(request, backend, TaskKind.TRANSCRIBE)


@router.post(
    "/v1/audio/translations",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={"requestBody": multipart_schema(OpenAIForm)},
)
async def translations(request: Request, backend: BackendDep) -> Response:
    """Translate audio into English text (OpenAI-compatible)."""
    return await _serve(request, backend, TaskKind.TRANSLATE)


async def _serve(request: Request, backend: Backend, kind: TaskKind) -> Response:
    accepted = await accept(request, backend, partial(_submission, backend, kind))
    final = await wait_final(request, backend, accepted.task.id)
    return await run_in_threadpool(_answer, backend, final, accepted.form)


def _submission(
    backend: Backend, kind: TaskKind, raw: Mapping[str, list[str]]
) -> tuple[OpenAIForm, Submission]:
    """The form fields, validated, with the model resolved. Blocking (model lookup)."""
    fields = dict(raw)
    if "timestamp_granularities" in fields:
        fields.setdefault(GRANULARITIES, []).extend(fields.pop("timestamp_granularities"))
    form = parse_form(fields, OpenAIForm, lists=(GRANULARITIES,))
    if form.task is not None and form.task != kind.value:
        raise ApiError(
            400,
            f"form field 'task' is {form.task!r} but this endpoint does {kind.value}: "
            f"use /v1/audio/{'translations' if form.task == 'translate' else 'transcriptions'}",
            code="invalid_value",
            param="task",
        )
    engine = form.engine or backend.default_engine
    model = openai_model(form.model, engine, backend.settings)
    options = TranscriptionOptions(
        model=model,
        engine=engine,
        task=kind,
        language=check_language(form.language, model),
        beam_size=form.beam_size,
        batch_size=form.batch_size,
        compute_type=form.compute_type,
        word_timestamps=form.word_timestamps or "word" in form.timestamp_granularities,
        vad_filter=form.vad_filter,
        initial_prompt=form.prompt,
        temperature=form.temperature,
    )
    return form, Submission(options, Priority.parse(form.priority))


def openai_model(name: str, engine: str, settings: Settings) -> str:
    """`whisper-1` means the default model; gpuscribe's names and those of other servers
    (`openai/whisper-large-v3`, `Systran/faster-whisper-large-v3`) mean the model they name.
    A model that is unknown, or that this server cannot run, is OpenAI's 404 `model_not_found`
    (a bad engine stays a 400 naming `engine`)."""
    wanted = settings.default_model if name.strip().lower() in DEFAULT_MODEL_NAMES else name
    try:
        return resolve_model_name(wanted, engine, settings)
    except InvalidRequest as exc:
        if exc.param == "engine":
            raise
        raise ApiError(
            404,
            f"The model `{name}` does not exist or is not available on this server: {exc.message}",
            code="model_not_found",
            param="model",
            kind="invalid_request_error",
            headers=NO_RETRY,
        ) from exc


async def wait_final(request: Request, backend: Backend, task_id: str) -> Task:
    """The task once it is final. The node says when it finishes there
    (`Backend.watch_final`, watched before the first read, so no signal is missed) and the task
    is read then; a task that finishes on another node of a cluster, which only the store
    sees, is found by a read every `FALLBACK_READ_SECONDS`. 504 after `task_timeout_seconds`
    (the task goes on); a client that hangs up has its task cancelled."""
    waiting = _Waiting(request, backend, task_id)
    with backend.watch_final(task_id, waiting.finished.set):
        return await waiting.until_final()


class _Waiting:
    """One request's wait: when to read the task again, when to look at the client."""

    def __init__(self, request: Request, backend: Backend, task_id: str) -> None:
        self.finished = _LoopEvent()
        self._request, self._backend, self._task_id = request, backend, task_id
        self._timeout = backend.settings.task_timeout_seconds
        start = time.monotonic()
        self._deadline = start + self._timeout
        self._next_check = start + DISCONNECT_CHECK_SECONDS

    async def until_final(self) -> Task:
        while True:
            self.finished.clear()  # before the read: a signal during it means read again
            task = await run_in_threadpool(self._backend.task, self._task_id)
            if task is None:
                message = f"task {self._task_id} disappeared from the store"
                raise ApiError(500, message, headers=NO_RETRY)
            if task.state.is_final:
                return task
            if time.monotonic() >= self._deadline:
                raise _timed_out(self._task_id, self._timeout)
            await self._until_read_due()

    async def _until_read_due(self) -> None:
        """Until the node signals, the fallback read is due or the deadline comes; the client
        is looked at every DISCONNECT_CHECK_SECONDS meanwhile."""
        read_at = min(time.monotonic() + FALLBACK_READ_SECONDS, self._deadline)
        while not self.finished.is_set() and (now := time.monotonic()) < read_at:
            if now >= self._next_check:
                self._next_check = now + DISCONNECT_CHECK_SECONDS
                await _cancel_if_gone(self._request, self._backend, self._task_id)
            with anyio.move_on_after(min(read_at, self._next_check) - now):
                await self.finished.wait()


class _LoopEvent:
    """An event of the request's event loop that any thread may set: the node signals a final
    task from its own threads. Waiting on it holds no thread."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def set(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


def _timed_out(task_id: str, timeout: float) -> ApiError:
    message = (
        f"task {task_id} did not finish within {timeout:g} s; it goes on: "
        f"GET /v1/tasks/{task_id}/result later"
    )
    return ApiError(504, message, code="timeout", headers=NO_RETRY)


async def _cancel_if_gone(request: Request, backend: Backend, task_id: str) -> None:
    if await request.is_disconnected():
        log.info("client of task %s hung up; cancelling it", task_id)
        await run_in_threadpool(backend.cancel, task_id)
        raise ApiError(400, "the client disconnected", code="client_disconnected")


def _answer(backend: Backend, task: Task, form: OpenAIForm) -> Response:
    if task.state is TaskState.FAILED:
        message = f"transcription failed: {task.error or 'no reason recorded'}"
        raise ApiError(500, message, code="task_failed", headers=NO_RETRY)
    if task.state is TaskState.CANCELLED:
        raise ApiError(
            409, f"task {task.id} was cancelled", code="task_cancelled", headers=NO_RETRY
        )
    transcript = backend.result(task.id)
    if transcript is None:
        raise ApiError(
            500, f"task {task.id} is completed but its result is missing", headers=NO_RETRY
        )
    fmt = form.response_format
    if fmt == "json":
        return JSONResponse(formats.to_json(transcript))
    if fmt == "verbose_json":
        wanted = form.timestamp_granularities or ["segment"]
        return JSONResponse(formats.to_verbose_json(transcript, wanted))
    layout = formats.SubtitleLayout(form.max_line_width, form.max_line_count)
    return PlainTextResponse(formats.render_text(transcript, fmt, layout))
