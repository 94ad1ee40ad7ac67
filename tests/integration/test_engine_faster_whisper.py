"""FasterWhisperEngine on the bundled tiny.en, against faster-whisper called directly."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jiwer
import numpy as np
import numpy.typing as npt
import pytest
from faster_whisper import WhisperModel

from gpuscribe.bench.speech import continuous_speech
from gpuscribe.domain import Segment, TranscriptionOptions
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines.faster_whisper_engine import FasterWhisperEngine, FasterWhisperModel
from gpuscribe.workers.messages import DeviceRef
from gpuscribe.workers.models import bundled_model_dir

CPU = DeviceRef(DeviceKind.CPU, "cpu", 0, "cpu")
# The first six sentences of the committed continuous speech: a meeting's opening, about 24 s.
SENTENCES = 6
SPEECH = " ".join(s.text for s in continuous_speech().sentences[:SENTENCES])


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def speech() -> npt.NDArray[np.float32]:
    audio, text = continuous_speech().first(SENTENCES)
    assert text == SPEECH
    return audio


@pytest.fixture(scope="module")
def model() -> Iterator[FasterWhisperModel]:
    loaded = FasterWhisperEngine(cpu_threads=2).load("tiny.en", CPU, "default")
    yield loaded
    loaded.unload()


def _transcribe(model: FasterWhisperModel, audio: npt.NDArray[np.float32], **kw: Any) -> Any:
    seen: list[tuple[Segment, float]] = []
    options = TranscriptionOptions(**kw)  # type: ignore[arg-type]
    result = model.transcribe(audio, options, lambda s, p: seen.append((s, p)), lambda: False)
    return result, seen


@pytest.fixture(scope="module")
def full(model: FasterWhisperModel, speech: npt.NDArray[np.float32]) -> Any:
    """One run with the default options, shared by the tests that only read it."""
    return _transcribe(model, speech)


def test_same_accuracy_as_faster_whisper_directly(full: Any, speech: Any) -> None:
    result, _ = full
    direct = WhisperModel(
        str(bundled_model_dir()), device="cpu", compute_type="default", cpu_threads=2
    )
    segments, _ = direct.transcribe(speech, beam_size=5, temperature=0.0)
    direct_text = "".join(s.text for s in segments)
    reference = _words(SPEECH)
    ours = jiwer.wer(reference, _words(result.text))
    theirs = jiwer.wer(reference, _words(direct_text))
    assert ours < 0.3
    assert abs(ours - theirs) <= 0.05
    assert result.language == "en"
    assert result.duration == pytest.approx(speech.size / 16000, abs=0.01)


def test_progress_rises_to_one(full: Any) -> None:
    result, seen = full
    progress = [p for _, p in seen]
    assert len(seen) == len(result.segments) >= 3
    assert progress == sorted(progress)
    assert progress[-1] == 1.0
    assert all(0.0 <= p <= 1.0 for p in progress)
    assert [s.id for s, _ in seen] == list(range(len(seen)))


def test_word_timestamps(model: Any, speech: Any) -> None:
    result, _ = _transcribe(model, speech, word_timestamps=True)
    words = [w for s in result.segments for w in s.words]
    assert len(words) > 30
    assert all(w.start <= w.end for w in words)


def test_batched_pipeline(model: Any, speech: Any) -> None:
    result, seen = _transcribe(model, speech, batch_size=2, beam_size=1)
    assert jiwer.wer(_words(SPEECH), _words(result.text)) < 0.35
    assert seen[-1][1] == 1.0


def test_should_stop_cancels_mid_file(model: Any, speech: Any, full: Any) -> None:
    reported: list[float] = []
    with pytest.raises(TaskCancelled):
        model.transcribe(
            speech, TranscriptionOptions(), lambda s, p: reported.append(p), lambda: bool(reported)
        )
    assert len(reported) == 1
    assert len(reported) < len(full[0].segments)


def test_weights_are_measured(model: Any) -> None:
    assert 50 * 1024**2 < model.weights_bytes < 1024**3
