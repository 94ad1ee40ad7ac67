"""An upload becomes a task: `accept` is the whole path of `POST /v1/tasks` and the OpenAI
endpoints, from the headers to the commit.

A repeated `Idempotency-Key` is looked up first and answered with the task it made: the body
is still read (its fields shape the answer) but its file is neither written, probed nor
fsync'ed. Otherwise the file part goes to a `StagedUpload`; one trip to the threadpool then
checks the form, writes the last bytes and fsyncs them, probes the audio, names the file after
its container and submits the task. Nothing is acknowledged before the audio is durable, and
the staged upload deletes the file on any rejection and for a key another request stored
first.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from gpuscribe.api.audio_checks import extension_for, probe_upload, require_file
from gpuscribe.api.backend import Backend, QueueFull
from gpuscribe.api.errors import ApiError, queue_full_error
from gpuscribe.api.form_values import FormT
from gpuscribe.api.multipart import Form, receive
from gpuscribe.api.staging import StagedUpload
from gpuscribe.audio.probe import AudioInfo
from gpuscribe.domain import NewTask, Priority, Task, TranscriptionOptions

MAX_IDEMPOTENCY_KEY_CHARS = 255


@dataclass(frozen=True, slots=True)
class Submission:
    """What the client asked for, validated; the audio is checked separately."""

    options: TranscriptionOptions
    priority: Priority


Build = Callable[[Mapping[str, list[str]]], tuple[FormT, Submission]]


@dataclass(frozen=True, slots=True)
class Accepted(Generic[FormT]):
    form: FormT
    task: Task
    created: bool  # False: the task an earlier submission with the same key made


def idempotency_key(request: Request) -> str | None:
    """The `Idempotency-Key` header, checked: printable, at most 255 characters."""
    raw = request.headers.get("idempotency-key")
    if raw is None or not raw.strip():
        return None
    key = raw.strip()
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise ApiError(
            400,
            "the Idempotency-Key header must be printable text of at most "
            f"{MAX_IDEMPOTENCY_KEY_CHARS} characters",
            param="Idempotency-Key",
        )
    return key


async def accept(request: Request, backend: Backend, build: Build[FormT]) -> Accepted[FormT]:
    """Receive the upload and submit its task; `build` validates the form's text fields."""
    key = idempotency_key(request)
    earlier = None if key is None else await run_in_threadpool(backend.replay, key)
    settings = backend.settings
    async with StagedUpload(settings.audio_dir, keep=earlier is None) as staged:
        form = await receive(request, staged, settings.max_upload_bytes)
        return await run_in_threadpool(_submit, backend, staged, form, build, key, earlier)


def _submit(
    backend: Backend,
    staged: StagedUpload,
    form: Form,
    build: Build[FormT],
    key: str | None,
    earlier: Task | None,
) -> Accepted[FormT]:
    """The form checked, then the audio made durable and probed and the task submitted, in
    one trip to the threadpool. Blocking."""
    parsed, submission = build(form.fields)
    if earlier is not None:
        return Accepted(parsed, earlier, created=False)
    require_file(form, staged.size)
    staged.finish()
    info = probe_upload(staged.path, backend.settings.max_audio_seconds)
    staged.place(f"{uuid.uuid4().hex}.{extension_for(info.container)}")
    new = new_task(submission, staged, info, form.filename, key, backend)
    try:
        task, created = backend.submit(new)
    except QueueFull as exc:
        raise queue_full_error(exc) from exc
    if created:
        staged.commit()
    return Accepted(parsed, task, created)


def new_task(
    submission: Submission,
    staged: StagedUpload,
    info: AudioInfo,
    filename: str | None,
    key: str | None,
    backend: Backend,
) -> NewTask:
    return NewTask(
        priority=submission.priority,
        options=submission.options,
        audio_path=str(staged.path),
        audio_seconds=info.duration_seconds,
        audio_format=info.container,
        original_filename=filename,
        idempotency_key=key,
        max_attempts=backend.settings.max_attempts,
    )
