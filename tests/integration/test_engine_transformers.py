"""TransformersEngine (the continuous batch) with the real bundled tiny.en on the CPU, against
the faster-whisper engine on the same clips and settings: accuracy, segments, word times,
results independent of what else runs, cancellation; and the benchmark-only random model."""

from __future__ import annotations

import itertools
import statistics
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gpuscribe.bench.speech import continuous_speech, samples, short_clip, speech_clips
from gpuscribe.domain import Segment, Transcript, TranscriptionOptions
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines.batched.model import BatchedModel
from gpuscribe.workers.engines.faster_whisper_engine import FasterWhisperEngine, FasterWhisperModel
from gpuscribe.workers.engines.transformers_engine import TransformersEngine
from gpuscribe.workers.messages import DeviceRef
from support.wer import normalise, word_error_rate

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

CPU = DeviceRef(DeviceKind.CPU, "cpu", 0, "cpu")
CLIPS = speech_clips()
# The service's defaults (beam 5, temperature fallback), as the faster-whisper engine runs them.
OURS = TranscriptionOptions(engine="transformers")
THEIRS = TranscriptionOptions(engine="faster-whisper")
WORDS = 0.5  # s: how far a matching segment's or word's start and end may be from faster-whisper's
Samples = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def ours(threads: None) -> Iterator[BatchedModel]:
    model = TransformersEngine().load("tiny.en", CPU, "default")
    assert not model.benchmark_only
    yield model
    model.unload()


@pytest.fixture(scope="module")
def theirs() -> Iterator[FasterWhisperModel]:
    model = FasterWhisperEngine(cpu_threads=2).load("tiny.en", CPU, "default")
    yield model
    model.unload()


def _run(model: Any, audio: Samples, options: TranscriptionOptions, **kw: Any) -> Transcript:
    result: Transcript = model.transcribe(audio, options, lambda s, p: None, lambda: False, **kw)
    return result


@pytest.fixture(scope="module")
def audio() -> list[Samples]:
    return [samples(c.path) for c in CLIPS]


@pytest.fixture(scope="module")
def alone(ours: BatchedModel, audio: list[Samples]) -> list[Transcript]:
    """Every speech clip through the batch, one at a time."""
    return [_run(ours, a, OURS) for a in audio]


@pytest.fixture(scope="module")
def continuous(ours: BatchedModel, theirs: FasterWhisperModel) -> tuple[Any, Any, Any]:
    """The 2-minute clip with word timestamps: (ours, faster-whisper's, the spoken sentences)."""
    speech = continuous_speech()
    audio = samples(speech.path)
    options = TranscriptionOptions(engine="transformers", word_timestamps=True)
    mine = _run(ours, audio, options)
    reference = _run(theirs, audio, TranscriptionOptions(word_timestamps=True))
    return mine, reference, speech


def test_word_error_rate_is_faster_whispers(
    alone: list[Transcript], theirs: FasterWhisperModel, audio: list[Samples]
) -> None:
    ours_wer = [word_error_rate(c.text, t.text) for c, t in zip(CLIPS, alone, strict=True)]
    theirs_wer = [
        word_error_rate(c.text, _run(theirs, a, THEIRS).text)
        for c, a in zip(CLIPS, audio, strict=True)
    ]
    assert statistics.mean(ours_wer) <= statistics.mean(theirs_wer) + 0.03, (ours_wer, theirs_wer)
    assert statistics.mean(ours_wer) < 0.25  # tiny.en on espeak, numbers spelled out
    for transcript in alone:
        assert transcript.language == "en"
        assert not transcript.benchmark_only
        assert [s.start for s in transcript.segments] == sorted(
            s.start for s in transcript.segments
        )


def test_short_clip(ours: BatchedModel) -> None:
    clip = short_clip()
    called = time.time()
    result = _run(ours, samples(clip.path), OURS)
    assert word_error_rate(clip.text, result.text) <= 0.25, result.text
    began = result.decoding_started_at  # for the task's history, not the result's JSON
    assert began is not None and called <= began <= time.time()
    assert "decoding_started_at" not in result.to_dict()


def test_continuous_speech_loses_nothing(continuous: tuple[Any, Any, Any]) -> None:
    mine, reference, speech = continuous
    ours_wer = word_error_rate(speech.text, mine.text)
    theirs_wer = word_error_rate(speech.text, reference.text)
    assert ours_wer <= theirs_wer + 0.03, (ours_wer, theirs_wer, mine.text)


def test_continuous_speech_gives_sentence_sized_segments(continuous: tuple[Any, Any, Any]) -> None:
    mine, _, speech = continuous
    lengths = [s.end - s.start for s in mine.segments]
    assert len(lengths) >= 20
    assert statistics.median(lengths) <= 15
    assert max(lengths) <= 30
    starts = [s.start for s in mine.segments]
    assert all(a < b for a, b in itertools.pairwise(starts)), starts
    assert all(s.end > s.start for s in mine.segments)
    assert mine.duration == pytest.approx(samples(speech.path).size / 16000, abs=0.01)
    assert mine.segments[-1].end <= mine.duration + 0.5


def test_words_lie_inside_their_segments(continuous: tuple[Any, Any, Any]) -> None:
    mine, _, _ = continuous
    for segment in mine.segments:
        assert segment.words, segment.text
        for word in segment.words:
            assert segment.start - 0.01 <= word.start <= word.end <= segment.end + 0.01
            assert 0.0 <= word.probability <= 1.0
        starts = [w.start for w in segment.words]
        assert starts == sorted(starts)
        assert normalise("".join(w.word for w in segment.words)) == normalise(segment.text)


def _matches(mine: Transcript, reference: Transcript) -> list[tuple[Segment, Segment]]:
    """Each of faster-whisper's segments with ours of (almost) the same text that overlaps it."""
    pairs = []
    for theirs in reference.segments:
        for segment in mine.segments:
            overlap = min(segment.end, theirs.end) - max(segment.start, theirs.start)
            if overlap > 0 and word_error_rate(theirs.text, segment.text) <= 0.35:
                pairs.append((segment, theirs))
                break
    return pairs


def test_segments_and_words_are_faster_whispers(continuous: tuple[Any, Any, Any]) -> None:
    mine, reference, _ = continuous
    pairs = _matches(mine, reference)
    assert len(pairs) >= 0.9 * len(reference.segments), (len(pairs), len(reference.segments))
    same_words = 0
    for segment, theirs in pairs:
        assert segment.start == pytest.approx(theirs.start, abs=WORDS), (segment, theirs)
        assert segment.end == pytest.approx(theirs.end, abs=WORDS), (segment, theirs)
        if [normalise(w.word) for w in segment.words] != [normalise(w.word) for w in theirs.words]:
            continue  # different words: their times need not match one to one
        same_words += 1
        for word, other in zip(segment.words, theirs.words, strict=True):
            assert word.start == pytest.approx(other.start, abs=WORDS), (word, other)
            assert word.end == pytest.approx(other.end, abs=WORDS), (word, other)
    assert same_words >= 0.7 * len(pairs)


def test_text_does_not_depend_on_the_other_tasks(
    ours: BatchedModel, alone: list[Transcript], audio: list[Samples]
) -> None:
    """Four clips at once from four threads at the four priorities, beside a greedy task."""
    chosen = [0, 3, 5, 7]
    greedy = TranscriptionOptions(engine="transformers", beam_size=1)
    with ThreadPoolExecutor(len(chosen) + 1) as pool:
        other = pool.submit(_run, ours, samples(continuous_speech().path)[: 30 * 16000], greedy)
        futures = [
            pool.submit(_run, ours, audio[i], OURS, priority=priority)
            for priority, i in enumerate(chosen)
        ]
        together = [f.result(timeout=240) for f in futures]
        assert other.result(timeout=240).text
    for i, result in zip(chosen, together, strict=True):
        assert word_error_rate(alone[i].text, result.text) <= 0.02, (alone[i].text, result.text)


def test_cancelling_stops_the_task_and_the_model_keeps_serving(
    ours: BatchedModel, alone: list[Transcript], audio: list[Samples]
) -> None:
    with pytest.raises(TaskCancelled, match="before it started"):
        ours.transcribe(audio[0], OURS, lambda s, p: None, lambda: True)
    long = samples(continuous_speech().path)[: 60 * 16000]  # two windows of 7 sentences
    batcher = ours.batcher
    reported: list[float] = []
    first_step = batcher.steps

    def should_stop() -> bool:  # a few steps into decoding, before any window can end
        return batcher.steps >= first_step + 12

    started = time.monotonic()
    with pytest.raises(TaskCancelled):
        ours.transcribe(long, OURS, lambda s, p: reported.append(p), should_stop)
    assert reported == []
    assert time.monotonic() - started < 60
    deadline = time.monotonic() + 10
    while batcher._rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not batcher._rows  # its rows are free again
    assert batcher.steps < first_step + 12 + 2 * 8  # stopped within a cancellation check or two
    assert _run(ours, audio[0], OURS).text == alone[0].text


def test_the_pooled_cache_transcribes_as_the_per_row_one(
    threads: None, audio: list[Samples], alone: list[Transcript]
) -> None:
    """Real tiny.en at the service's 5 beams with each window's audio once in its slot of a
    pooled cache (`GPUSCRIBE_BATCH_LAYOUT=pooled`; on the CPU it reads the slots through a
    gathered copy): every clip's transcript is the per-row cache's, alone and all at once."""
    auto = TransformersEngine().load("tiny.en", CPU, "default")
    assert not auto.decoder.pooled  # `auto` keeps the per-row cache on the CPU
    auto.unload()
    pooled = TransformersEngine(batch_layout="pooled").load("tiny.en", CPU, "default")
    try:
        assert pooled.decoder.pooled and pooled.decoder.rows > pooled.decoder.cache_rows
        some = audio[:4]
        with ThreadPoolExecutor(len(some)) as pool:
            together = list(pool.map(lambda a: _run(pooled, a, OURS), some))
        for one, other in zip(alone, together, strict=False):
            assert word_error_rate(normalise(one.text), normalise(other.text)) == 0.0
        assert _run(pooled, audio[4], OURS).text == alone[4].text
    finally:
        pooled.unload()


# --- benchmark only -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_model() -> Iterator[BatchedModel]:
    engine = TransformersEngine(tiny_config_for_tests=True, benchmark_tokens=16, batch_rows=8)
    model = engine.load("tiny.en", CPU, "default")
    yield model
    model.unload()


def test_random_weights_run_and_are_marked_benchmark_only(random_model: BatchedModel) -> None:
    audio = np.random.default_rng(0).normal(scale=0.1, size=65 * 16000).astype(np.float32)
    seen: list[float] = []
    result = random_model.transcribe(audio, OURS, lambda s, p: seen.append(p), lambda: False)
    assert random_model.benchmark_only
    assert result.benchmark_only is True
    assert result.to_dict()["benchmark_only"] is True
    assert result.language == "en"
    assert result.duration == 65.0
    assert seen == sorted(seen)
    assert result.segments  # random text, but three windows decoded
    assert all(0 <= s.start <= s.end <= result.duration for s in result.segments)
    assert 5 * 1024**2 < random_model.weights_bytes < 50 * 1024**2


@pytest.mark.parametrize("layout", ["per-row", "pooled"])
def test_an_unloaded_model_lets_go_of_its_tensors_at_once(layout: str) -> None:
    """Unload frees the weights, the cache and the decoder's tensors when it returns, though the
    caller still holds the model (a worker measures its memory right after), and a second
    unload or a late transcribe fails cleanly."""
    engine = TransformersEngine(
        tiny_config_for_tests=True, benchmark_tokens=4, batch_rows=8, batch_layout=layout
    )
    model = engine.load("tiny.en", CPU, "default")
    audio = np.random.default_rng(1).normal(scale=0.1, size=30 * 16000).astype(np.float32)
    model.transcribe(audio, OURS, lambda s, p: None, lambda: False)
    decoder, cache = model.decoder, model.cache_bytes
    held = [weakref.ref(t) for t in (decoder.self_k, decoder.cross_v, decoder.logits)]
    held += [weakref.ref(p) for p in model._whisper.parameters()]  # type: ignore[union-attr]
    model.unload()
    assert [ref() for ref in held] == [None] * len(held)
    assert model.cache_bytes == cache  # still readable
    model.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        model.transcribe(audio, OURS, lambda s, p: None, lambda: False)


def test_a_short_task_begun_behind_a_long_one_of_its_priority_ends_first() -> None:
    """The tasks' windows share one row: a 30 s task that begins while a 4-minute one of the
    same priority decodes takes the next free row (its opening window goes first) and ends
    long before the other, whose windows then take turns with it."""
    engine = TransformersEngine(tiny_config_for_tests=True, benchmark_tokens=16, batch_rows=1)
    model = engine.load("tiny.en", CPU, "default")
    greedy = TranscriptionOptions(engine="transformers", beam_size=1)
    rng = np.random.default_rng(2)
    long, short = (rng.normal(scale=0.1, size=s * 16000).astype(np.float32) for s in (240, 30))
    ended: list[str] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            first = model.batcher.steps
            done = pool.submit(_run, model, long, greedy)
            done.add_done_callback(lambda _: ended.append("long"))
            deadline = time.monotonic() + 60
            while model.batcher.steps < first + 4 and time.monotonic() < deadline:
                time.sleep(0.002)  # the long task's first window decodes
            _run(model, short, greedy)
            ended.append("short")
            assert done.result(timeout=240).segments
    finally:
        model.unload()
    assert ended == ["short", "long"]
