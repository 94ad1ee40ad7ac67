"""A Whisper model on its continuous batch: the `LoadedModel` the transformers engine returns.

One instance per (model, compute type) in a worker, shared by all of that model's tasks: each
task's thread runs `WindowedTranscription` and waits on the batcher, which decodes every task's
windows together.
"""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gpuscribe.domain import Priority, Segment, Transcript, TranscriptionOptions
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines.batched.backend import BatchedWhisper, TaskContext, set_context
from gpuscribe.workers.engines.batched.batcher import Batcher
from gpuscribe.workers.engines.batched.decoder import StaticDecoder
from gpuscribe.workers.engines.batched.pipeline import WindowedTranscription, make_shell
from gpuscribe.workers.engines.batched.search import Vocabulary

log = logging.getLogger(__name__)

IN_FLIGHT = 256  # windows of one task queued on the batch at once, at most
BENCHMARK_TOKENS_MEAN = 100
BENCHMARK_TOKENS_RANGE = (10, 224)


def batch_priority(priority: int) -> int:
    """The batcher's priority of a task of gpuscribe `priority`. The batcher admits higher
    numbers first; gpuscribe runs lower ones sooner (`Priority.URGENT` = 0 ... `LOW` = 3):
    URGENT -> 3, HIGH -> 2, NORMAL -> 1, LOW -> 0, so that urgent windows take rows first."""
    return int(Priority.LOW) - int(priority)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the batch needs to know of a loaded model beyond its weights."""

    tokenizer_file: str
    multilingual: bool
    n_mels: int
    lang_ids: tuple[int, ...]
    lang_tokens: tuple[str, ...]
    alignment_heads: tuple[tuple[int, int], ...]
    suppress_ids: tuple[int, ...]
    suppress_ids_begin: tuple[int, ...]


def vocabulary_from_tokenizer(tokenizer_file: str, size: int, info: ModelInfo) -> Vocabulary:
    """Special token ids from the tokenizer the prompts are made with; `size` is the model's
    vocabulary (a random-weights model may have more rows than the tokenizer has tokens)."""
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)

    def token(text: str) -> int:
        found = tokenizer.token_to_id(text)
        if found is None:
            raise ValueError(f"{tokenizer_file} has no {text}")
        return int(found)

    no_timestamps = token("<|notimestamps|>")
    no_speech = tokenizer.token_to_id("<|nospeech|>")
    if no_speech is None:
        no_speech = token("<|nocaptions|>")
    eot = token("<|endoftext|>")
    blank = info.suppress_ids_begin or (*tokenizer.encode(" ", add_special_tokens=False).ids, eot)
    return Vocabulary(
        size=size,
        eot=eot,
        sot=token("<|startoftranscript|>"),
        no_timestamps=no_timestamps,
        no_speech=int(no_speech),
        timestamp_begin=no_timestamps + 1,
        blank_ids=tuple(int(i) for i in blank),
        default_suppress=info.suppress_ids,
    )


class BatchedModel:
    """`LoadedModel` over one continuous batch."""

    def __init__(
        self,
        whisper: Any,
        info: ModelInfo,
        *,
        rows: int,
        use_graphs: bool,
        weights_bytes: int,
        pooled: bool = False,
        benchmark_only: bool = False,
        benchmark_tokens: int = 0,
    ) -> None:
        self.weights_bytes = weights_bytes
        self.benchmark_only = benchmark_only
        self.benchmark_tokens = benchmark_tokens
        self._whisper = whisper
        self.decoder = StaticDecoder(whisper, rows, use_graphs=use_graphs, pooled=pooled)
        vocabulary = vocabulary_from_tokenizer(info.tokenizer_file, self.decoder.shape.vocab, info)
        self.batcher = Batcher(self.decoder, vocabulary, info.n_mels)
        self.batcher.call(self.batcher.capture_graphs)  # on the thread that owns the device
        self.backend = BatchedWhisper(
            self.batcher,
            multilingual=info.multilingual and not benchmark_only,
            n_mels=info.n_mels,
            lang_ids=info.lang_ids,
            lang_tokens=info.lang_tokens,
            alignment_heads=info.alignment_heads,
            device=self.decoder.device.type,
        )
        self._shell = make_shell(self.backend, info.tokenizer_file)

    @property
    def cache_bytes(self) -> int:
        d = self.decoder
        return d.cache_rows * d.shape.row_bytes(d.dtype.itemsize)

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscriptionOptions,
        on_segment: Callable[[Segment, float], None],
        should_stop: Callable[[], bool],
        priority: int = int(Priority.NORMAL),
    ) -> Transcript:
        """`priority` is the task's gpuscribe priority (lower runs sooner), mapped to the
        batcher's by `batch_priority`."""
        from gpuscribe.workers.engines.faster_whisper_engine import _segment

        if self._whisper is None:
            raise RuntimeError("the model was unloaded")
        if should_stop():
            raise TaskCancelled("cancelled before it started")
        forced = self._forced_lengths(audio) if self.benchmark_only else None
        queued = batch_priority(priority)
        set_context(TaskContext(priority=queued, should_stop=should_stop))
        try:
            run = WindowedTranscription(
                self._shell,
                audio,
                options,
                in_flight=IN_FLIGHT,
                priority=queued,
                should_stop=should_stop,
                cut_at_pauses=not self.benchmark_only,
                forced_lengths=forced,
            )
            segments: list[Segment] = []
            for raw in run.segments():
                segment = _segment(len(segments), raw)
                segments.append(segment)
                on_segment(segment, min(1.0, segment.end / max(run.duration, 1e-9)))
        finally:
            set_context(None)
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            language=run.language,
            duration=run.duration,
            segments=tuple(segments),
            task=options.task,
            benchmark_only=self.benchmark_only,
            decoding_started_at=run.decoding_started_at,
        )

    def _forced_lengths(self, audio: npt.NDArray[np.float32]) -> Callable[[int], int]:
        """Benchmark only: tokens to decode per window, fixed (`benchmark_tokens`) or, at 0,
        drawn per window (mean about 100, 10 to 224) so that rows end at different steps; seeded
        by the audio so that a run is repeatable."""
        if self.benchmark_tokens > 0:
            fixed = self.benchmark_tokens
            return lambda _: fixed
        seed = int(audio.size)
        low, high = BENCHMARK_TOKENS_RANGE

        def draw(window: int) -> int:
            rng = random.Random(seed * 100_003 + window)
            value = int(rng.lognormvariate(np.log(BENCHMARK_TOKENS_MEAN) - 0.18, 0.6))
            return max(low, min(high, value))

        return draw

    def unload(self) -> None:
        """Stop the batch and drop the model's device memory (weights, cache, captured steps);
        a collection frees what only reference cycles still hold."""
        self.batcher.close()
        self._whisper = None
        gc.collect()
