"""TransformersEngine with a very small random config, on the CPU."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gpuscribe.bench.speech import samples, short_clip
from gpuscribe.domain import Segment, TranscriptionOptions
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines.transformers_engine import TransformersEngine, TransformersModel
from gpuscribe.workers.messages import DeviceRef

pytest.importorskip("torch")
pytest.importorskip("transformers")
CPU = DeviceRef(DeviceKind.CPU, "cpu", 0, "cpu")
GREEDY_PAIRS = TranscriptionOptions(engine="transformers", beam_size=1, batch_size=2)


@pytest.fixture(scope="module")
def audio_65s() -> npt.NDArray[np.float32]:
    """Speech padded with silence to exactly 65 s."""
    speech = samples(short_clip().path)
    return np.pad(speech, (0, 65 * 16000 - speech.size))


@pytest.fixture(scope="module")
def model() -> Iterator[TransformersModel]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend with other tests
    loaded = TransformersEngine(tiny_config_for_tests=True).load("tiny.en", CPU, "default")
    yield loaded
    loaded.unload()
    torch.set_num_threads(threads)


def _run(model: TransformersModel, audio: Any, options: TranscriptionOptions) -> Any:
    seen: list[tuple[Segment, float]] = []
    result = model.transcribe(audio, options, lambda s, p: seen.append((s, p)), lambda: False)
    return result, seen


def test_one_segment_per_window_in_batches_of_two(model: Any, audio_65s: Any) -> None:
    assert audio_65s.size == 65 * 16000
    result, seen = _run(model, audio_65s, GREEDY_PAIRS)
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert [p for _, p in seen] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert result.duration == 65.0
    assert all(len(s.tokens) > 0 for s in result.segments)


def test_marked_benchmark_only(model: Any, audio_65s: Any) -> None:
    result, _ = _run(model, audio_65s[: 16000 * 5], GREEDY_PAIRS)
    assert result.benchmark_only is True
    assert result.to_dict()["benchmark_only"] is True
    assert result.language == "en"


def test_beam_search(model: Any, audio_65s: Any) -> None:
    options = TranscriptionOptions(engine="transformers", beam_size=2, batch_size=1)
    result, seen = _run(model, audio_65s[: 16000 * 10], options)
    assert len(result.segments) == 1
    assert seen[-1][1] == 1.0


def test_cancel_between_batches(model: Any, audio_65s: Any) -> None:
    reported: list[float] = []
    with pytest.raises(TaskCancelled, match="after 2 of 3 windows"):
        model.transcribe(
            audio_65s, GREEDY_PAIRS, lambda s, p: reported.append(p), lambda: bool(reported)
        )
    assert len(reported) == 2  # the first batch of two windows, then nothing


def test_cancel_stops_generation(model: Any, audio_65s: Any) -> None:
    """should_stop() turning true mid-generate stops decoding at once."""
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] > 5

    options = TranscriptionOptions(engine="transformers", beam_size=1, batch_size=3)
    started = time.perf_counter()
    with pytest.raises(TaskCancelled, match="during generation"):
        model.transcribe(audio_65s, options, lambda s, p: None, should_stop)
    assert calls[0] < 20  # about one call per decoded token, not 224
    assert time.perf_counter() - started < 30


def test_weights_are_the_tensors(model: Any) -> None:
    assert 5 * 1024**2 < model.weights_bytes < 50 * 1024**2
