"""Uploads: multipart body -> durable, probed audio file under a name the service chose.

The body is parsed as it streams in (python-multipart), the `file` part written to a temporary
file inside `settings.audio_dir` in batches on the threadpool, its size checked as it grows. The
file is created with its first batch, and the last batch is written by the one blocking call that
then fsyncs the file, probes it (decodes it end to end), renames it `<uuid>.<ext>` after its real
container, fsyncs its directory and commits the task: a small upload costs one trip to the
threadpool, and nothing is acknowledged before the audio is durable. Any rejection deletes the
file. The client's filename is kept only as metadata, stripped of path and control
characters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from gpuscribe.api.backend import Backend, QueueFull
from gpuscribe.api.errors import ApiError, queue_full_error, validation_message
from gpuscribe.audio.probe import AudioInfo, probe
from gpuscribe.config import Settings
from gpuscribe.domain import InvalidRequest, NewTask, Priority, Task, TranscriptionOptions
from gpuscribe.workers.models import canonical_name, check_engine, resolve_model

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
MAX_FILENAME_CHARS = 255
MAX_IDEMPOTENCY_KEY_CHARS = 255
FORM_OVERHEAD_BYTES = MAX_FIELDS * MAX_FIELD_BYTES + 64 * 1024
WRITE_BATCH_BYTES = 1024 * 1024
_EXTENSIONS = {"mov": "mp4", "matroska": "mkv", "mpegts": "ts"}

FormT = TypeVar("FormT", bound=BaseModel)


@dataclass(slots=True)
class Received:
    """What a multipart body held: text fields, and the file part, bound for `path`. Its last
    bytes may still be in memory: `finish_file` writes them and fsyncs the file, `discard`
    deletes it (both blocking)."""

    path: Path
    fields: dict[str, list[str]] = field(default_factory=dict)
    filename: str | None = None
    has_file: bool = False
    size: int = 0
    temp: _TempFile | None = field(default=None, repr=False)
    rest: bytes = field(default=b"", repr=False)

    def finish_file(self) -> None:
        """The file part complete and fsync'ed at `path` (once)."""
        if self.temp is not None:
            temp, self.temp = self.temp, None
            temp.finish(self.rest)
            self.rest = b""

    def discard(self) -> None:
        """The file closed and deleted, wherever it got to."""
        if self.temp is not None:
            self.temp.discard()
            self.temp = None
        self.rest = b""
        remove_quietly(self.path)


@dataclass(frozen=True, slots=True)
class StoredAudio:
    path: Path
    info: AudioInfo
    original_filename: str | None


def sanitize_filename(raw: str | None) -> str | None:
    """The last path component, without control characters, at most 255 characters."""
    if raw is None:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))
    name = name.strip()[:MAX_FILENAME_CHARS]
    return None if name in ("", ".", "..") else name


def extension_for(container: str) -> str:
    """A file extension from a probed container name (`mov,mp4,m4a` -> `mp4`)."""
    first = container.split(",", 1)[0].strip().lower()
    first = _EXTENSIONS.get(first, first)
    cleaned = re.sub(r"[^a-z0-9]", "", first)[:10]
    return cleaned or "audio"


# --- receiving ----------------------------------------------------------------------------------
class _PartSink:
    """python-multipart callbacks: collects fields, queues file bytes for the threadpool."""

    def __init__(self, received: Received, max_file_bytes: int) -> None:
        self.received = received
        self.max_file_bytes = max_file_bytes
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field: str | None = None
        self._data = bytearray()
        self._in_file = False
        self._field_count = 0

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._field = None
        self._data = bytearray()
        self._in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ApiError(400, "malformed multipart body: a part has no field name")
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options or name == FILE_FIELD:
            self._begin_file(name, options.get(b"filename"))
        else:
            self._begin_field(name)

    def _begin_file(self, name: str, filename: bytes | None) -> None:
        if name != FILE_FIELD:
            raise ApiError(
                400, f"unexpected file in field {name!r}: send the audio as 'file'", param=name
            )
        if self.received.has_file:
            raise ApiError(
                400, "more than one 'file' part: send one audio file per request", param=FILE_FIELD
            )
        self.received.has_file = True
        raw = None if filename is None else filename.decode("utf-8", "replace")
        self.received.filename = sanitize_filename(raw)
        self._in_file = True

    def _begin_field(self, name: str) -> None:
        self._field_count += 1
        if self._field_count > MAX_FIELDS:
            raise ApiError(400, f"too many form fields (at most {MAX_FIELDS})")
        self._field = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._in_file:
            self._file_data(chunk)
        elif len(self._data) + len(chunk) > MAX_FIELD_BYTES:
            raise ApiError(
                400,
                f"form field {self._field!r} is longer than {MAX_FIELD_BYTES} bytes",
                code="field_too_long",
                param=self._field,
            )
        else:
            self._data.extend(chunk)

    def _file_data(self, chunk: bytes) -> None:
        self.received.size += len(chunk)
        if self.received.size > self.max_file_bytes:
            raise too_large(self.max_file_bytes)
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)

    def on_part_end(self) -> None:
        if self._in_file or self._field is None:
            return
        try:
            value = self._data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(
                400, f"form field {self._field!r} is not UTF-8 text", param=self._field
            ) from exc
        self.received.fields.setdefault(self._field, []).append(value)

    def on_end(self) -> None:
        self.ended = True

    def take_pending(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return data


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the upload is larger than the {limit} bytes this server accepts "
        "(setting max_upload_bytes)",
        code="upload_too_large",
        param=FILE_FIELD,
    )


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise ApiError(
            415,
            "the request must be multipart/form-data with the audio in 'file'",
            code="unsupported_media_type",
        )
    if not params.get(b"boundary"):
        raise ApiError(400, "malformed multipart body: the Content-Type has no boundary")
    return params[b"boundary"]


def _check_length(request: Request, max_file_bytes: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise too_large(max_file_bytes)


class _TempFile:
    """The temporary file of one upload, created at its first write. Blocking methods."""

    def __init__(self, audio_dir: Path) -> None:
        self.audio_dir = audio_dir
        self.path = audio_dir / f".upload-{uuid.uuid4().hex}.part"
        self.handle: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self.handle is None:
            self.audio_dir.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("xb")
        return self.handle

    def append(self, data: bytes) -> None:
        self._open().write(data)

    def finish(self, data: bytes) -> None:
        """The last bytes written, then the file flushed, fsync'ed and closed."""
        handle = self._open()
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()

    def discard(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(OSError):
                self.handle.close()
        remove_quietly(self.path)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


async def receive(request: Request, settings: Settings) -> Received:
    """Stream the multipart body; the `file` part goes to a temp file in `settings.audio_dir`,
    but for its last batch, which `Received.finish_file` writes (with the probe, on the
    threadpool). On any failure the temp file is deleted and the error raised."""
    boundary = _boundary(request)
    _check_length(request, settings.max_upload_bytes)
    temp = _TempFile(settings.audio_dir)
    received = Received(path=temp.path)
    try:
        rest = await _stream(request, boundary, received, temp, settings.max_upload_bytes)
    except BaseException:
        if temp.handle is not None:  # nothing is on disk before the first batch
            await run_in_threadpool(temp.discard)
        raise
    received.temp, received.rest = temp, rest
    return received


async def _stream(
    request: Request, boundary: bytes, received: Received, temp: _TempFile, limit: int
) -> bytes:
    """Parse the body, writing the file part in batches; the bytes of the last batch, unwritten."""
    sink = _PartSink(received, limit)
    parser = MultipartParser(boundary, _callbacks(sink))
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if sink.pending_bytes >= WRITE_BATCH_BYTES:
                await run_in_threadpool(temp.append, sink.take_pending())
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, f"malformed multipart body: {exc}") from exc
    except ClientDisconnect:
        log.info("client disconnected during an upload")
        raise
    if not sink.ended:
        raise ApiError(400, "malformed multipart body: it ends before its closing boundary")
    return sink.take_pending()


def _callbacks(sink: _PartSink) -> MultipartCallbacks:
    return {
        "on_part_begin": sink.on_part_begin,
        "on_part_data": sink.on_part_data,
        "on_part_end": sink.on_part_end,
        "on_header_field": sink.on_header_field,
        "on_header_value": sink.on_header_value,
        "on_header_end": sink.on_header_end,
        "on_headers_finished": sink.on_headers_finished,
        "on_end": sink.on_end,
    }


# --- form values ------------------------------------------------------------------------------
def parse_form(
    fields: Mapping[str, list[str]], form: type[FormT], lists: tuple[str, ...] = ()
) -> FormT:
    """Validate text fields into `form`; empty values count as absent. 400 naming the field."""
    values: dict[str, object] = {}
    for name, items in fields.items():
        present = [v for v in items if v != ""]
        if not present:
            continue
        if name in lists:
            values[name] = present
        elif len(present) > 1:
            raise ApiError(400, f"form field {name!r} is given more than once", param=name)
        else:
            values[name] = present[0]
    try:
        return form.model_validate(values)
    except ValidationError as exc:
        message, param = validation_message(exc.errors(), "form field")
        raise ApiError(400, message, code="invalid_value", param=param) from exc


# --- audio --------------------------------------------------------------------------------------
def check_audio(received: Received, settings: Settings) -> StoredAudio:
    """Write the rest of the received file and fsync it; probe it; rename it `<uuid>.<ext>`;
    make the name durable. Blocking: run it on the threadpool. Deletes the file and raises
    ApiError when it is not acceptable audio."""
    try:
        received.finish_file()
        return _store(received, settings)
    except BaseException:
        received.discard()
        raise


def _store(received: Received, settings: Settings) -> StoredAudio:
    if not received.has_file:
        raise ApiError(
            400,
            "missing form field 'file': attach the audio file",
            code="missing_file",
            param=FILE_FIELD,
        )
    if received.size == 0:
        raise ApiError(422, "the uploaded file is empty", code="empty_file", param=FILE_FIELD)
    info = _probe(received.path, settings.max_audio_seconds)
    final = received.path.with_name(f"{uuid.uuid4().hex}.{extension_for(info.container)}")
    os.replace(received.path, final)
    received.path = final
    _fsync_dir(final.parent)
    return StoredAudio(final, info, received.filename)


def _probe(path: Path, max_seconds: float) -> AudioInfo:
    try:
        info = probe(path, max_seconds=max_seconds)
    except InvalidRequest as exc:
        status = 413 if exc.code == "audio_too_long" else 422
        raise ApiError(
            status, _limit_message(exc, max_seconds), code=exc.code, param=FILE_FIELD
        ) from exc
    if info.duration_seconds > max_seconds:
        raise ApiError(
            413,
            _too_long(info.duration_seconds, max_seconds),
            code="audio_too_long",
            param=FILE_FIELD,
        )
    return info


def _limit_message(exc: InvalidRequest, max_seconds: float) -> str:
    if exc.code == "audio_too_long":
        return _too_long(None, max_seconds)
    return exc.message


def _too_long(seconds: float | None, max_seconds: float) -> str:
    length = "" if seconds is None else f" ({seconds:.1f} s)"
    return (
        f"the audio is too long{length}: this server accepts at most {max_seconds:g} s "
        "(setting max_audio_seconds)"
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the task -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Submission:
    """What the client asked for, validated; the audio is checked separately."""

    options: TranscriptionOptions
    priority: Priority
    idempotency_key: str | None = None


def resolve_model_name(name: str, engine: str, settings: Settings) -> str:
    """The canonical name of a model this server can run with `engine` (400 otherwise). On
    simulated GPUs no weights are needed: a known name is enough. Blocking (file system)."""
    if settings.simulate_gpus:
        check_engine(engine)
        return canonical_name(name)
    try:
        source = resolve_model(
            name,
            engine,
            models_dir=settings.models_dir,
            allow_downloads=settings.allow_downloads,
            benchmark_only=settings.benchmark_only,
        )
    except InvalidRequest as exc:
        message = exc.message
        if exc.code == "model_not_found":
            message += f" (or fetch it with `gpuscribe models pull {name} --engine {engine}`)"
        raise InvalidRequest(message, code=exc.code, param=exc.param or "model") from exc
    return source.name


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


def new_task(submission: Submission, stored: StoredAudio, settings: Settings) -> NewTask:
    return NewTask(
        priority=submission.priority,
        options=submission.options,
        audio_path=str(stored.path),
        audio_seconds=stored.info.duration_seconds,
        audio_format=stored.info.container,
        original_filename=stored.original_filename,
        idempotency_key=submission.idempotency_key,
        max_attempts=settings.max_attempts,
    )


def submit_audio(backend: Backend, received: Received, submission: Submission) -> tuple[Task, bool]:
    """Probe and store the audio, then submit the task. Blocking: run it on the threadpool.
    The audio file is deleted on any rejection, and for a repeated idempotency key."""
    stored = check_audio(received, backend.settings)
    try:
        task, created = backend.submit(new_task(submission, stored, backend.settings))
    except QueueFull as exc:
        remove_quietly(stored.path)
        raise queue_full_error(exc) from exc
    except BaseException:
        remove_quietly(stored.path)
        raise
    if not created:
        remove_quietly(stored.path)
    return task, created
