"""The shared nouns' dictionaries: what `to_dict` writes, `from_dict` reads back; an absent key
takes the default its dataclass field declares."""

from __future__ import annotations

from typing import Any

import pytest

from gpuscribe.domain import Segment, TaskKind, Transcript, TranscriptionOptions, Word

OPTIONS = TranscriptionOptions(
    model="large-v3",
    engine="transformers",
    task=TaskKind.TRANSLATE,
    language="de",
    beam_size=2,
    batch_size=4,
    compute_type="float16",
    word_timestamps=True,
    vad_filter=True,
    initial_prompt="Glossary: gpuscribe.",
    temperature=0.2,
)

TRANSCRIPT = Transcript(
    text=" Hallo Welt.",
    language="de",
    duration=31.5,
    segments=(
        Segment(
            id=0,
            start=0.0,
            end=2.5,
            text=" Hallo Welt.",
            words=(Word(0.0, 1.0, " Hallo", 0.9), Word(1.0, 2.5, " Welt.", 0.8)),
            avg_logprob=-0.3,
            no_speech_prob=0.01,
            compression_ratio=1.1,
            temperature=0.2,
            tokens=(50364, 2425),
        ),
    ),
    task=TaskKind.TRANSLATE,
    simulated=True,
    benchmark_only=True,
)


def test_options_round_trip() -> None:
    assert TranscriptionOptions.from_dict(OPTIONS.to_dict()) == OPTIONS


def test_transcript_round_trip() -> None:
    assert Transcript.from_dict(TRANSCRIPT.to_dict()) == TRANSCRIPT


@pytest.mark.parametrize("missing", list(OPTIONS.to_dict()))
def test_an_absent_option_takes_its_field_default(missing: str) -> None:
    data = OPTIONS.to_dict()
    del data[missing]
    read = TranscriptionOptions.from_dict(data)
    assert getattr(read, missing) == getattr(TranscriptionOptions(), missing)
    assert all(getattr(read, k) == getattr(OPTIONS, k) for k in data)


def test_empty_options_are_the_defaults() -> None:
    assert TranscriptionOptions.from_dict({}) == TranscriptionOptions()


def test_options_convert_their_values_and_ignore_unknown_keys() -> None:
    read = TranscriptionOptions.from_dict(
        {"task": "translate", "beam_size": "3", "temperature": 1, "retired_option": "x"}
    )
    assert read == TranscriptionOptions(task=TaskKind.TRANSLATE, beam_size=3, temperature=1.0)
    assert isinstance(read.task, TaskKind)
    assert isinstance(read.beam_size, int)
    assert isinstance(read.temperature, float)


def test_a_transcript_with_only_its_text_takes_every_other_default() -> None:
    assert Transcript.from_dict({"text": "hi"}) == Transcript("hi")
    assert Transcript("hi").language is None
    assert Transcript("hi").duration == 0.0
    assert Transcript("hi").segments == ()


def test_an_absent_segment_key_takes_its_field_default() -> None:
    data: dict[str, Any] = {"id": "4", "start": 1, "end": 2, "text": "x"}
    segment = Transcript.from_dict({"text": "x", "segments": [data]}).segments[0]
    assert segment == Segment(id=4, start=1.0, end=2.0, text="x")
    assert segment.words == ()
    assert segment.tokens == ()
    assert segment.avg_logprob == 0.0


@pytest.mark.parametrize(
    ("build", "data"),
    [
        (Transcript.from_dict, {"language": "en"}),
        (Segment.from_dict, {"id": 0, "start": 0.0, "text": "x"}),
        (Word.from_dict, {"start": 0.0, "end": 1.0, "word": "x"}),
    ],
)
def test_a_required_key_that_is_absent_is_an_error(build: Any, data: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        build(data)
