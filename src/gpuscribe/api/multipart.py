"""A multipart body, parsed as it streams in (python-multipart): text fields into a `Form`,
the `file` part into a `StagedUpload`, its size checked as it grows. The client's filename is
kept only as metadata, stripped of path and control characters."""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from gpuscribe.api.errors import ApiError
from gpuscribe.api.staging import StagedUpload

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

FILE_FIELD = "file"
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
MAX_FILENAME_CHARS = 255
FORM_OVERHEAD_BYTES = MAX_FIELDS * MAX_FIELD_BYTES + 64 * 1024


@dataclass(slots=True)
class Form:
    """What a multipart body held besides the file's bytes."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    filename: str | None = None
    has_file: bool = False


def sanitize_filename(raw: str | None) -> str | None:
    """The last path component, without control characters, at most 255 characters."""
    if raw is None:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))
    name = name.strip()[:MAX_FILENAME_CHARS]
    return None if name in ("", ".", "..") else name


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the upload is larger than the {limit} bytes this server accepts "
        "(setting max_upload_bytes)",
        code="upload_too_large",
        param=FILE_FIELD,
    )


async def receive(request: Request, staged: StagedUpload, max_file_bytes: int) -> Form:
    """Stream the body: the file part's bytes into `staged` (written a batch at a time on the
    threadpool, the last batch left for `staged.finish`), the rest into the returned Form."""
    boundary = _boundary(request)
    _check_length(request, max_file_bytes)
    sink = _PartSink(staged, max_file_bytes)
    parser = MultipartParser(boundary, _callbacks(sink))
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if staged.batch_ready:
                await run_in_threadpool(staged.flush)
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, f"malformed multipart body: {exc}") from exc
    except ClientDisconnect:
        log.info("client disconnected during an upload")
        raise
    if not sink.ended:
        raise ApiError(400, "malformed multipart body: it ends before its closing boundary")
    return sink.form


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


class _PartSink:
    """python-multipart callbacks: collects fields, hands file bytes to the staged upload."""

    def __init__(self, staged: StagedUpload, max_file_bytes: int) -> None:
        self.staged = staged
        self.max_file_bytes = max_file_bytes
        self.form = Form()
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
        if self.form.has_file:
            raise ApiError(
                400, "more than one 'file' part: send one audio file per request", param=FILE_FIELD
            )
        self.form.has_file = True
        raw = None if filename is None else filename.decode("utf-8", "replace")
        self.form.filename = sanitize_filename(raw)
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
        if self.staged.size + len(chunk) > self.max_file_bytes:
            raise too_large(self.max_file_bytes)
        self.staged.buffer(chunk)

    def on_part_end(self) -> None:
        if self._in_file or self._field is None:
            return
        try:
            value = self._data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(
                400, f"form field {self._field!r} is not UTF-8 text", param=self._field
            ) from exc
        self.form.fields.setdefault(self._field, []).append(value)

    def on_end(self) -> None:
        self.ended = True


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
