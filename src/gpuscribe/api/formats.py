"""Transcript -> the formats people use: json, verbose_json, text, srt, vtt, tsv.

Pure functions. JSON shapes are OpenAI's (`json`: `{"text"}`; `verbose_json`: task, language,
duration, text, segments, words). Subtitles follow whisper's writers. A transcript that is not one
(simulated GPUs, random-weight benchmark models) says so: `"simulated": true` /
`"benchmark_only": true` in JSON, a note first in the text formats.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from gpuscribe.domain import Segment, Transcript

ResultFormat = Literal["json", "verbose_json", "text", "srt", "vtt", "tsv"]
RESULT_FORMATS: tuple[ResultFormat, ...] = ("json", "verbose_json", "text", "srt", "vtt", "tsv")
JSON_FORMATS = frozenset({"json", "verbose_json"})

SIMULATED_NOTE = "[gpuscribe: simulated run on simulated GPUs; this is not a transcript]"
BENCHMARK_NOTE = "[gpuscribe: benchmark-only model with random weights; this is not a transcript]"


def marker_note(transcript: Transcript) -> str | None:
    if transcript.simulated:
        return SIMULATED_NOTE
    if transcript.benchmark_only:
        return BENCHMARK_NOTE
    return None


def _markers(transcript: Transcript) -> dict[str, bool]:
    marks: dict[str, bool] = {}
    if transcript.simulated:
        marks["simulated"] = True
    if transcript.benchmark_only:
        marks["benchmark_only"] = True
    return marks


def to_json(transcript: Transcript) -> dict[str, Any]:
    return {"text": transcript.text, **_markers(transcript)}


def _seek(segment: Segment) -> int:
    """Whisper's `seek`: the mel frame (10 ms) where the segment's 30 s window starts."""
    return int(segment.start // 30.0) * 3000


def _segment_json(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": _seek(segment),
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def _words_json(transcript: Transcript) -> list[dict[str, Any]]:
    return [
        {"word": w.word, "start": w.start, "end": w.end}
        for segment in transcript.segments
        for w in segment.words
    ]


def to_verbose_json(
    transcript: Transcript, granularities: Collection[str] = ("segment",)
) -> dict[str, Any]:
    """OpenAI's verbose_json. Segments unless only words were asked for; words when asked."""
    body: dict[str, Any] = {
        "task": transcript.task.value,
        "language": transcript.language or "",
        "duration": transcript.duration,
        "text": transcript.text,
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [_segment_json(s) for s in transcript.segments]
    if "word" in granularities:
        body["words"] = _words_json(transcript)
    body.update(_markers(transcript))
    return body


def _with_note(transcript: Transcript, lines: list[str]) -> str:
    note = marker_note(transcript)
    head = [note] if note else []
    return "\n".join(head + lines) + "\n"


def to_text(transcript: Transcript) -> str:
    return _with_note(transcript, [transcript.text.strip()])


def timestamp(seconds: float, separator: str) -> str:
    """`HH:MM:SS<sep>mmm`, rounded to the millisecond; negative times clamp to zero."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_text(segment: Segment) -> str:
    return segment.text.strip().replace("-->", "->")


def to_srt(transcript: Transcript) -> str:
    """SubRip: 1-based cues, `HH:MM:SS,mmm`. A marker note is a zero-length first cue."""
    cues: list[tuple[float, float, str]] = []
    note = marker_note(transcript)
    if note:
        cues.append((0.0, 0.0, note))
    cues.extend((s.start, s.end, _cue_text(s)) for s in transcript.segments)
    blocks = [
        f"{n}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{text}\n"
        for n, (start, end, text) in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    """WebVTT: header, then cues with `HH:MM:SS.mmm`. A marker is a NOTE block."""
    blocks = ["WEBVTT\n"]
    note = marker_note(transcript)
    if note:
        blocks.append(f"NOTE {note}\n")
    blocks.extend(
        f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{_cue_text(s)}\n"
        for s in transcript.segments
    )
    return "\n".join(blocks)


def to_tsv(transcript: Transcript) -> str:
    """Whisper's TSV: `start\\tend\\ttext` header, times in integer milliseconds."""
    rows = ["start\tend\ttext"]
    rows.extend(
        f"{round(1000 * s.start)}\t{round(1000 * s.end)}\t{s.text.strip().replace(chr(9), ' ')}"
        for s in transcript.segments
    )
    return _with_note(transcript, rows)


def render_text(transcript: Transcript, fmt: str) -> str:
    """One of the text formats: text, srt, vtt, tsv."""
    writers = {"text": to_text, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}
    return writers[fmt](transcript)


def media_type(fmt: str) -> str:
    if fmt in JSON_FORMATS:
        return "application/json"
    if fmt == "vtt":
        return "text/vtt; charset=utf-8"
    return "text/plain; charset=utf-8"
