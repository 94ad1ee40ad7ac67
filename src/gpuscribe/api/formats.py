"""Transcript -> the formats people use: json, verbose_json, text, srt, vtt, tsv.

Pure functions. JSON shapes are OpenAI's (`json`: `{"text"}`; `verbose_json`: task, language,
duration, text, segments, words). Subtitles follow whisper's writers: lines of at most 42
characters, at most 2 lines a cue (`SubtitleLayout`), no cue ending after the audio. A
transcript that is not one (simulated GPUs, random-weight benchmark models) says so:
`"simulated": true` / `"benchmark_only": true` in JSON, a note first in the text formats.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from gpuscribe.audio import MEL_FRAMES, WINDOW_SECONDS
from gpuscribe.domain import Segment, Transcript, Word

ResultFormat = Literal["json", "verbose_json", "text", "srt", "vtt", "tsv"]
RESULT_FORMATS: tuple[ResultFormat, ...] = ("json", "verbose_json", "text", "srt", "vtt", "tsv")
JSON_FORMATS = frozenset({"json", "verbose_json"})
# Subtitle lines as broadcasters and Netflix's style guide have them: 42 characters, 2 lines.
DEFAULT_LINE_WIDTH = 42
DEFAULT_LINE_COUNT = 2

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
    return int(segment.start // WINDOW_SECONDS) * MEL_FRAMES


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


@dataclass(frozen=True, slots=True)
class SubtitleLayout:
    """How subtitle cues are laid out (Whisper's writers' options). `max_line_width`
    characters a line, `max_line_count` lines a cue; 0 means no limit. A segment too long for
    one cue becomes several: split between words at their times when the transcript has word
    timestamps, else in proportion to the characters."""

    max_line_width: int = DEFAULT_LINE_WIDTH
    max_line_count: int = DEFAULT_LINE_COUNT


@dataclass(frozen=True, slots=True)
class Cue:
    start: float
    end: float
    text: str  # lines joined by "\n"


def _clean(text: str) -> str:
    return " ".join(text.replace("-->", "->").split())


def _lines(words: list[str], width: int) -> list[str]:
    """Words (stripped) into lines of at most `width` characters; a longer word stands alone."""
    lines: list[str] = []
    for word in words:
        if lines and (width <= 0 or len(lines[-1]) + 1 + len(word) <= width):
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _chunks(lines: list[str], count: int) -> list[list[str]]:
    if count <= 0:
        return [lines]
    return [lines[i : i + count] for i in range(0, len(lines), count)]


def _segment_cues(segment: Segment, layout: SubtitleLayout) -> list[Cue]:
    text = _clean(segment.text)
    lines = _lines(text.split(), layout.max_line_width)
    chunks = _chunks(lines, layout.max_line_count)
    if len(chunks) == 1:
        return [Cue(segment.start, segment.end, "\n".join(lines))]
    timed = [w for w in segment.words if _clean(w.word)]
    if timed and " ".join(_clean(w.word) for w in timed) == text:
        return _cues_from_words(timed, layout)
    total = sum(len(" ".join(c)) for c in chunks) or 1
    cues, start = [], segment.start
    span = max(0.0, segment.end - segment.start)
    for i, chunk in enumerate(chunks):
        text = "\n".join(chunk)
        end = segment.end if i == len(chunks) - 1 else start + span * len(" ".join(chunk)) / total
        cues.append(Cue(start, end, text))
        start = end
    return cues


def _cues_from_words(words: list[Word], layout: SubtitleLayout) -> list[Cue]:
    """Fill lines word by word; a word that would need one line too many starts a new cue."""
    cues: list[Cue] = []
    current: list[Word] = []

    def close() -> None:
        if current:
            text = "\n".join(_lines([_clean(w.word) for w in current], layout.max_line_width))
            cues.append(Cue(current[0].start, current[-1].end, text))
            current.clear()

    for word in words:
        lines = _lines([_clean(w.word) for w in (*current, word)], layout.max_line_width)
        if current and 0 < layout.max_line_count < len(lines):
            close()
        current.append(word)
    close()
    return cues


def subtitle_cues(transcript: Transcript, layout: SubtitleLayout | None = None) -> list[Cue]:
    """The transcript's cues, laid out, none ending after the audio does."""
    layout = layout or SubtitleLayout()
    cues = [cue for s in transcript.segments for cue in _segment_cues(s, layout) if cue.text]
    if transcript.duration <= 0:
        return cues
    limit = transcript.duration
    return [Cue(min(c.start, limit), min(max(c.end, c.start), limit), c.text) for c in cues]


def to_srt(transcript: Transcript, layout: SubtitleLayout | None = None) -> str:
    """SubRip: 1-based cues, `HH:MM:SS,mmm`. A marker note is a zero-length first cue."""
    cues: list[Cue] = []
    note = marker_note(transcript)
    if note:
        cues.append(Cue(0.0, 0.0, note))
    cues.extend(subtitle_cues(transcript, layout))
    blocks = [
        f"{n}\n{timestamp(c.start, ',')} --> {timestamp(c.end, ',')}\n{c.text}\n"
        for n, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript, layout: SubtitleLayout | None = None) -> str:
    """WebVTT: header, then cues with `HH:MM:SS.mmm`. A marker is a NOTE block."""
    blocks = ["WEBVTT\n"]
    note = marker_note(transcript)
    if note:
        blocks.append(f"NOTE {note}\n")
    blocks.extend(
        f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n{c.text}\n"
        for c in subtitle_cues(transcript, layout)
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


def render_text(transcript: Transcript, fmt: str, layout: SubtitleLayout | None = None) -> str:
    """One of the text formats: text, srt, vtt (laid out by `layout`), tsv."""
    if fmt == "srt":
        return to_srt(transcript, layout)
    if fmt == "vtt":
        return to_vtt(transcript, layout)
    writers = {"text": to_text, "tsv": to_tsv}
    return writers[fmt](transcript)


def result_format(name: str) -> ResultFormat | None:
    """A format name in any case (`SRT`, ` Verbose_JSON `), or None for an unknown one."""
    wanted = name.strip().lower()
    for fmt in RESULT_FORMATS:
        if fmt == wanted:
            return fmt
    return None


def media_type(fmt: str) -> str:
    if fmt in JSON_FORMATS:
        return "application/json"
    if fmt == "vtt":
        return "text/vtt; charset=utf-8"
    return "text/plain; charset=utf-8"
