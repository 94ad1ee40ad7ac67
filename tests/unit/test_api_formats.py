"""Transcript -> json, verbose_json, text, srt, vtt, tsv."""

from __future__ import annotations

import itertools

import pytest

from gpuscribe.api import formats
from gpuscribe.domain import Segment, TaskKind, Transcript, Word

WORDS = (Word(0.0, 0.4, " Hi", 0.9), Word(0.4, 0.9, " there", 0.8))
TRANSCRIPT = Transcript(
    text=" Hi there. It --> works\tfine.",
    language="en",
    duration=3725.5,
    segments=(
        Segment(0, 0.0, 0.9, " Hi there.", WORDS, -0.25, 0.01, 1.3, 0.0, (50, 51)),
        Segment(1, 3601.0015, 3725.5, " It --> works\tfine.", (), -0.5, 0.2, 1.1, 0.2, (52,)),
    ),
    task=TaskKind.TRANSLATE,
)
SIMULATED = Transcript("", None, 10.0, simulated=True)
BENCHMARK = Transcript("x", "en", 1.0, (Segment(0, 0.0, 1.0, " x"),), benchmark_only=True)


def test_json_is_text_only() -> None:
    assert formats.to_json(TRANSCRIPT) == {"text": TRANSCRIPT.text}


def test_verbose_json_has_openai_fields() -> None:
    body = formats.to_verbose_json(TRANSCRIPT)
    assert body["task"] == "translate"
    assert body["language"] == "en"
    assert body["duration"] == 3725.5
    assert "words" not in body
    first, second = body["segments"]
    assert set(first) == {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert first["tokens"] == [50, 51]
    assert first["seek"] == 0
    assert second["seek"] == 120 * 3000  # the 30 s window holding 3601 s


def test_verbose_json_words_only_when_asked() -> None:
    words = formats.to_verbose_json(TRANSCRIPT, ["word"])
    assert words["words"] == [
        {"word": " Hi", "start": 0.0, "end": 0.4},
        {"word": " there", "start": 0.4, "end": 0.9},
    ]
    assert "segments" not in words
    both = formats.to_verbose_json(TRANSCRIPT, ["word", "segment"])
    assert len(both["segments"]) == 2 and len(both["words"]) == 2


def test_text_is_stripped_with_newline() -> None:
    assert formats.to_text(TRANSCRIPT) == "Hi there. It --> works\tfine.\n"


@pytest.mark.parametrize(
    ("seconds", "sep", "expected"),
    [
        (0.0, ",", "00:00:00,000"),
        (1.5, ".", "00:00:01.500"),
        (3601.0015, ",", "01:00:01,002"),
        (59.9996, ".", "00:01:00.000"),
        (-1.0, ",", "00:00:00,000"),
        (36000.0, ".", "10:00:00.000"),
    ],
)
def test_timestamp(seconds: float, sep: str, expected: str) -> None:
    assert formats.timestamp(seconds, sep) == expected


def test_srt_cues_are_one_based_with_commas() -> None:
    assert formats.to_srt(TRANSCRIPT) == (
        "1\n00:00:00,000 --> 00:00:00,900\nHi there.\n\n"
        "2\n01:00:01,002 --> 01:02:05,500\nIt -> works fine.\n"
    )


def test_vtt_has_header_and_dots() -> None:
    assert formats.to_vtt(TRANSCRIPT) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:00.900\nHi there.\n\n"
        "01:00:01.002 --> 01:02:05.500\nIt -> works fine.\n"
    )


def test_tsv_is_integer_milliseconds() -> None:
    assert formats.to_tsv(TRANSCRIPT) == (
        "start\tend\ttext\n0\t900\tHi there.\n3601002\t3725500\tIt --> works fine.\n"
    )


def test_simulated_marker_in_every_format() -> None:
    assert formats.to_json(SIMULATED) == {"text": "", "simulated": True}
    assert formats.to_verbose_json(SIMULATED)["simulated"] is True
    for fmt in ("text", "tsv"):
        first = formats.render_text(SIMULATED, fmt).splitlines()[0]
        assert first == formats.SIMULATED_NOTE
    assert formats.to_vtt(SIMULATED).startswith(f"WEBVTT\n\nNOTE {formats.SIMULATED_NOTE}\n")
    assert formats.to_srt(SIMULATED) == (
        f"1\n00:00:00,000 --> 00:00:00,000\n{formats.SIMULATED_NOTE}\n"
    )


def test_benchmark_marker_shifts_srt_cues() -> None:
    assert formats.to_json(BENCHMARK) == {"text": "x", "benchmark_only": True}
    srt = formats.to_srt(BENCHMARK)
    assert srt.startswith(f"1\n00:00:00,000 --> 00:00:00,000\n{formats.BENCHMARK_NOTE}\n\n2\n")
    assert formats.to_text(BENCHMARK) == f"{formats.BENCHMARK_NOTE}\nx\n"


def test_real_transcripts_carry_no_marker() -> None:
    assert "simulated" not in formats.to_verbose_json(TRANSCRIPT)
    assert formats.marker_note(TRANSCRIPT) is None


def test_empty_transcript() -> None:
    empty = Transcript("", "en", 0.0)
    assert formats.to_srt(empty) == ""
    assert formats.to_vtt(empty) == "WEBVTT\n"
    assert formats.to_tsv(empty) == "start\tend\ttext\n"
    assert formats.to_verbose_json(empty)["segments"] == []


@pytest.mark.parametrize(
    ("fmt", "media"),
    [
        ("json", "application/json"),
        ("verbose_json", "application/json"),
        ("text", "text/plain; charset=utf-8"),
        ("srt", "text/plain; charset=utf-8"),
        ("tsv", "text/plain; charset=utf-8"),
        ("vtt", "text/vtt; charset=utf-8"),
    ],
)
def test_media_types(fmt: str, media: str) -> None:
    assert formats.media_type(fmt) == media


# --- subtitle layout ------------------------------------------------------------------------
LONG = (
    "The quick brown fox jumps over the lazy dog near the river bank while seven children "
    "walked home from school on a cold and windy afternoon in the late autumn."
)


def _words(text: str, start: float, step: float) -> tuple[Word, ...]:
    return tuple(
        Word(start + i * step, start + (i + 1) * step, f" {w}", 0.9)
        for i, w in enumerate(text.split())
    )


def _cue_lines(srt: str) -> list[list[str]]:
    return [block.split("\n")[2:] for block in srt.strip().split("\n\n")]


def test_default_layout_is_42_characters_and_2_lines() -> None:
    transcript = Transcript(LONG, "en", 20.0, (Segment(0, 0.0, 12.0, " " + LONG),))
    cues = _cue_lines(formats.to_srt(transcript))
    assert len(cues) > 1
    assert all(1 <= len(lines) <= 2 for lines in cues)
    assert all(len(line) <= 42 for lines in cues for line in lines)
    assert " ".join(" ".join(lines) for lines in cues) == LONG  # nothing lost or reordered


def test_split_without_words_shares_the_segment_time_and_keeps_its_ends() -> None:
    transcript = Transcript(LONG, "en", 20.0, (Segment(0, 2.0, 12.0, LONG),))
    cues = formats.subtitle_cues(transcript)
    assert cues[0].start == 2.0 and cues[-1].end == 12.0
    assert all(a.end == b.start for a, b in itertools.pairwise(cues))
    assert all(c.start < c.end for c in cues)


def test_split_with_words_cuts_at_word_times() -> None:
    words = _words(LONG, 1.0, 0.25)
    transcript = Transcript(LONG, "en", 20.0, (Segment(0, 1.0, words[-1].end, LONG, words),))
    cues = formats.subtitle_cues(transcript)
    starts = {w.start for w in words}
    ends = {w.end for w in words}
    assert len(cues) > 1
    assert all(c.start in starts and c.end in ends for c in cues)


@pytest.mark.parametrize(("width", "count"), [(20, 1), (30, 3), (0, 0)])
def test_width_and_count_options(width: int, count: int) -> None:
    transcript = Transcript(LONG, "en", 20.0, (Segment(0, 0.0, 12.0, LONG),))
    layout = formats.SubtitleLayout(max_line_width=width, max_line_count=count)
    cues = formats.subtitle_cues(transcript, layout)
    if width == 0:
        assert [c.text for c in cues] == [LONG]  # 0: no limit
        return
    for cue in cues:
        lines = cue.text.split("\n")
        assert len(lines) <= count
        assert all(len(line) <= width for line in lines)
    assert formats.to_vtt(transcript, layout).count(" --> ") == len(cues)


def test_last_cue_never_ends_after_the_audio() -> None:
    """Whisper's last segment may end past the audio (6.000 for a 5.9 s file)."""
    transcript = Transcript(
        "Hello there.", "en", 5.9,
        (Segment(0, 0.0, 2.0, " Hello"), Segment(1, 2.0, 6.0, " there.")),
    )  # fmt: skip
    assert "00:00:02,000 --> 00:00:05,900\nthere." in formats.to_srt(transcript)
    assert "00:00:02.000 --> 00:00:05.900\nthere." in formats.to_vtt(transcript)


def test_format_names_in_any_case() -> None:
    assert formats.result_format(" SRT ") == "srt"
    assert formats.result_format("Verbose_JSON") == "verbose_json"
    assert formats.result_format("docx") is None
