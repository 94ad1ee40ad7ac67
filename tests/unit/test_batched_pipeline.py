"""Whisper's per-window rules in the batched pipeline: the temperature schedule, when a window
falls back to the next temperature, which attempt is kept, and when a window is silence."""

from __future__ import annotations

import pytest

from gpuscribe.workers.engines.batched.batcher import GenerationResult
from gpuscribe.workers.engines.batched.pipeline import (
    COMPRESSION_RATIO_THRESHOLD,
    LOG_PROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    Attempt,
    final_attempt,
    temperatures,
)


class _Tokenizer:
    """Token ids are letters: enough for the compression ratio of the text."""

    eot = 1000

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)


def _attempt(
    avg: float = -0.2, ratio: float = 1.5, no_speech: float = 0.0, t: float = 0.0
) -> Attempt:
    return Attempt([1, 2, 3], avg, no_speech, ratio, t)


def test_the_schedule_rises_from_the_tasks_temperature_to_one() -> None:
    assert temperatures(0.0) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperatures(0.5) == (0.5, 0.6, 0.8, 1.0)
    assert temperatures(1.0) == (1.0,)


def test_a_likely_readable_window_is_kept() -> None:
    assert not _attempt().needs_fallback
    assert not _attempt().silent


@pytest.mark.parametrize(
    ("avg", "ratio"),
    [(LOG_PROB_THRESHOLD - 0.1, 1.5), (-0.2, COMPRESSION_RATIO_THRESHOLD + 0.1)],
    ids=["unlikely", "repetitive"],
)
def test_an_unlikely_or_repetitive_window_falls_back(avg: float, ratio: float) -> None:
    assert _attempt(avg=avg, ratio=ratio).needs_fallback


def test_silence_is_dropped_not_retried() -> None:
    silent = _attempt(avg=LOG_PROB_THRESHOLD - 0.5, no_speech=NO_SPEECH_THRESHOLD + 0.1)
    assert silent.silent
    assert not silent.needs_fallback


def test_a_likely_window_is_speech_however_likely_no_speech_was() -> None:
    assert not _attempt(avg=-0.2, no_speech=0.99).silent


def test_when_every_temperature_fell_back_the_likeliest_readable_attempt_wins() -> None:
    attempts = [
        _attempt(avg=-1.5, ratio=1.2, t=0.0),
        _attempt(avg=-0.5, ratio=3.0, t=0.2),  # likelier, but repetitive
        _attempt(avg=-1.2, ratio=1.3, t=0.4),
    ]
    assert final_attempt(attempts).temperature == 0.4


def test_when_every_attempt_is_repetitive_the_likeliest_wins() -> None:
    attempts = [_attempt(avg=-1.5, ratio=3.0, t=0.0), _attempt(avg=-1.1, ratio=2.9, t=0.2)]
    assert final_attempt(attempts).temperature == 0.2


def test_an_attempt_reads_faster_whispers_figures_from_a_result() -> None:
    # CTranslate2's score is the cumulative log-probability over the tokens' count (length
    # penalty 1); faster-whisper's average counts the end token too.
    result = GenerationResult(sequences_ids=[[0, 1, 2, 3]], scores=[-0.5], no_speech_prob=0.1)
    attempt = Attempt.of(result, 0.2, _Tokenizer())
    assert attempt.avg_logprob == pytest.approx(-0.5 * 4 / 5)
    assert attempt.no_speech_prob == 0.1
    assert attempt.temperature == 0.2
    assert 0 < attempt.compression_ratio < COMPRESSION_RATIO_THRESHOLD


def test_a_repeated_text_has_a_high_compression_ratio() -> None:
    result = GenerationResult(sequences_ids=[[0, 1, 2] * 60], scores=[-0.1])
    assert Attempt.of(result, 0.0, _Tokenizer()).needs_fallback
