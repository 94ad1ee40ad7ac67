"""Is the upload audio this server accepts? Present, not empty, decodable end to end, not
longer than `max_audio_seconds`. Each refusal is an ApiError naming the `file` field."""

from __future__ import annotations

import re
from pathlib import Path

from gpuscribe.api.errors import ApiError
from gpuscribe.api.multipart import FILE_FIELD, Form
from gpuscribe.audio.probe import AudioInfo, probe
from gpuscribe.domain import InvalidRequest

_EXTENSIONS = {"mov": "mp4", "matroska": "mkv", "mpegts": "ts"}


def require_file(form: Form, size: int) -> None:
    """The body had a `file` part of `size` bytes: it must have one, and not an empty one."""
    if not form.has_file:
        raise ApiError(
            400,
            "missing form field 'file': attach the audio file",
            code="missing_file",
            param=FILE_FIELD,
        )
    if size == 0:
        raise ApiError(422, "the uploaded file is empty", code="empty_file", param=FILE_FIELD)


def extension_for(container: str) -> str:
    """A file extension from a probed container name (`mov,mp4,m4a` -> `mp4`)."""
    first = container.split(",", 1)[0].strip().lower()
    first = _EXTENSIONS.get(first, first)
    cleaned = re.sub(r"[^a-z0-9]", "", first)[:10]
    return cleaned or "audio"


def probe_upload(path: Path, max_seconds: float) -> AudioInfo:
    """The audio at `path`, decoded end to end (blocking), at most `max_seconds` long."""
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
