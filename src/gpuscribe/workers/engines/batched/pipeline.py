"""One task's transcription over the continuous batch.

The audio is cut at pauses by the Silero voice-activity model (at most 30 s a window), every
window is queued at once (up to `in_flight` at a time) so that the windows of one long task
decode in parallel with each other and with other tasks', and the results are stitched in time
order as they arrive. Each window falls back to higher temperatures on its own when its text is
too repetitive or too unlikely (Whisper's rule), is dropped when it is silence, is split into
segments at its timestamp tokens, and gets word times from cross-attention when asked.

The pieces come from faster-whisper (MIT), which the faster-whisper engine uses too: the VAD,
the mel features, the tokenizer, the timestamp splitting and the word alignment; `WhisperShell`
is faster-whisper's `WhisperModel` over our `BatchedWhisper` instead of CTranslate2.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gpuscribe.audio import SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS
from gpuscribe.domain import TranscriptionOptions
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines.batched.backend import BatchedWhisper
from gpuscribe.workers.engines.batched.batcher import EncoderInput, GenerationResult, Pending
from gpuscribe.workers.engines.batched.search import DecodeOptions

log = logging.getLogger(__name__)

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
BEST_OF = 5
# A window whose tokens end in two timestamps at least this long before its end is decoded on
# from that timestamp (faster-whisper seeks there): the model left the rest of the audio.
MIN_REST_SECONDS = 1.0
# faster-whisper's defaults: punctuation merged into the word before or after it.
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001 (CJK punctuation, on purpose)


def temperatures(first: float) -> tuple[float, ...]:
    """The fallback schedule from the task's temperature: Whisper's steps of 0.2 up to 1.0."""
    rest = tuple(t for t in FALLBACK_TEMPERATURES if t > first + 1e-9)
    return (first, *rest)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One decoding of a window at one temperature, judged by Whisper's rules."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float

    @classmethod
    def of(cls, result: GenerationResult, temperature: float, tokenizer: Any) -> Attempt:
        """faster-whisper's figures of a result: the average log-probability over the tokens
        and the end token, and the gzip compression ratio of the text."""
        from faster_whisper.transcribe import get_compression_ratio

        tokens = list(result.sequences_ids[0]) if result.sequences_ids else []
        cumulative = result.scores[0] * len(tokens) if result.scores else 0.0
        text = tokenizer.decode([t for t in tokens if t < tokenizer.eot])
        ratio = get_compression_ratio(text) if text else 0.0
        average = cumulative / (len(tokens) + 1)
        return cls(tokens, average, result.no_speech_prob, ratio, temperature)

    @property
    def silent(self) -> bool:
        """No speech: the no-speech token was likely and the text unlikely."""
        return self.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob < LOG_PROB_THRESHOLD

    @property
    def needs_fallback(self) -> bool:
        """Too repetitive or too unlikely to keep (silence is dropped, not retried)."""
        if self.silent:
            return False
        too_repetitive = self.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        return too_repetitive or self.avg_logprob < LOG_PROB_THRESHOLD


def final_attempt(attempts: list[Attempt]) -> Attempt:
    """When every temperature fell back: the likeliest attempt among those not too repetitive,
    else among all (faster-whisper's choice)."""
    readable = [a for a in attempts if a.compression_ratio <= COMPRESSION_RATIO_THRESHOLD]
    return max(readable or attempts, key=lambda a: a.avg_logprob)


def make_shell(backend: BatchedWhisper, tokenizer_file: str) -> Any:
    """faster-whisper's `WhisperModel`, its CTranslate2 model replaced by `backend`."""
    import tokenizers
    from faster_whisper import WhisperModel
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.utils import get_logger

    class WhisperShell(WhisperModel):  # type: ignore[misc]
        def __init__(self) -> None:  # no CTranslate2 model, no download
            self.logger = get_logger()
            self.model = backend
            self.hf_tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
            self.feat_kwargs = {"feature_size": backend.n_mels}
            self.feature_extractor = FeatureExtractor(**self.feat_kwargs)
            self.input_stride = 2
            self.num_samples_per_token = self.feature_extractor.hop_length * self.input_stride
            self.frames_per_second = (
                self.feature_extractor.sampling_rate // self.feature_extractor.hop_length
            )
            self.tokens_per_second = (
                self.feature_extractor.sampling_rate // self.num_samples_per_token
            )
            self.time_precision = 0.02
            self.max_length = 448

        def encode(self, features: Any) -> EncoderInput:
            return backend.encode(features)

    return WhisperShell()


@dataclass(slots=True)
class _Window:
    index: int
    offset: float
    duration: float
    encoded: EncoderInput
    pending: Pending
    temperature_index: int = 0
    skip: float = 0.0  # seconds of its chunk before this window (the rest of a window)


class WindowedTranscription:
    """The windows of one task in flight on the batch; `segments()` yields faster-whisper
    segments in time order."""

    def __init__(
        self,
        shell: Any,
        audio: npt.NDArray[np.float32],
        options: TranscriptionOptions,
        *,
        in_flight: int,
        priority: int,
        should_stop: Callable[[], bool],
        cut_at_pauses: bool,
        forced_lengths: Callable[[int], int] | None = None,
    ) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._shell = shell
        self._backend: BatchedWhisper = shell.model
        self._options = options
        self._in_flight = max(1, in_flight)
        self._priority = priority
        self._should_stop = should_stop
        self._forced = forced_lengths
        self.duration = audio.size / SAMPLE_RATE
        self._clips = self._clip_timestamps(audio, cut_at_pauses)
        self._chunks, self._metadata = self._collect(audio)
        self.language = self._language(options)
        multilingual = self._backend.is_multilingual
        self._tokenizer = Tokenizer(
            shell.hf_tokenizer, multilingual, task=options.task.value, language=self.language
        )
        self._suppress = tuple(get_suppressed_tokens(self._tokenizer, [-1]))
        previous = (
            self._tokenizer.encode(" " + options.initial_prompt.strip())
            if options.initial_prompt
            else []
        )
        self._prompt = shell.get_prompt(self._tokenizer, previous, without_timestamps=False)
        self._temperatures = temperatures(options.temperature)
        self._last_speech = 0.0
        self._first: Pending | None = None  # the first window submitted
        self._first_turn: int | None = None  # what later windows' turns count from (`next_turn`)

    # --- cutting ----------------------------------------------------------------------------
    def _clip_timestamps(self, audio: npt.NDArray[np.float32], cut: bool) -> list[dict[str, int]]:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        if not cut:
            step = WINDOW_SAMPLES
            return [
                {"start": s, "end": min(s + step, audio.size)} for s in range(0, audio.size, step)
            ]
        vad = VadOptions(max_speech_duration_s=WINDOW_SECONDS, min_silence_duration_ms=160)
        return list(get_speech_timestamps(audio, vad))

    def _collect(self, audio: npt.NDArray[np.float32]) -> tuple[list[Any], list[dict[str, Any]]]:
        from faster_whisper.vad import collect_chunks

        if not self._clips:
            return [], []
        return collect_chunks(audio, self._clips, max_duration=WINDOW_SECONDS)  # type: ignore[no-any-return]

    def _features(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        from faster_whisper.audio import pad_or_trim

        features = self._shell.feature_extractor(chunk)[..., :-1]
        return np.asarray(pad_or_trim(features), dtype=np.float32)

    def _language(self, options: TranscriptionOptions) -> str:
        if not self._backend.is_multilingual:
            return "en"
        if options.language:
            return options.language
        if not self._chunks:
            return "en"
        features = self._features(self._chunks[0])
        language, _, _ = self._shell.detect_language(features=features)
        return str(language)

    # --- decoding ---------------------------------------------------------------------------
    def _decode_options(self, window: int, temperature_index: int) -> DecodeOptions:
        o = self._options
        temperature = self._temperatures[temperature_index]
        sampling = temperature > 0
        forced = self._forced(window) if self._forced is not None else 0
        return DecodeOptions(
            beam_size=1 if sampling else max(1, o.beam_size),
            num_hypotheses=BEST_OF if sampling else 1,
            sampling_topk=0 if sampling else 1,
            sampling_temperature=temperature if sampling else 1.0,
            suppress_blank=True,
            suppress_tokens=self._suppress,
            return_no_speech_prob=True,
            max_initial_timestamp_index=50,
            forced_length=forced,
        )

    @property
    def decoding_started_at(self) -> float | None:
        """When this task's first window entered the batch (seconds since the epoch)."""
        return None if self._first is None else self._first.started_at

    def _submit(self, index: int, encoded: EncoderInput, temperature_index: int) -> Pending:
        if self._first_turn is None:
            self._first_turn = self._backend.batcher.next_turn(self._priority)
        pending = self._backend.batcher.submit(
            encoded,
            [list(self._prompt)],
            self._decode_options(index, temperature_index),
            priority=self._priority,
            turn=None if index == 0 else self._first_turn + index,  # opening first, then turns
            should_stop=self._should_stop,
        )
        if self._first is None:
            self._first = pending
        return pending

    def segments(self) -> Iterator[Any]:
        """faster-whisper `Segment`s in time order, as their windows finish."""
        from faster_whisper.transcribe import restore_speech_timestamps

        raw = self._windows()
        for segment in restore_speech_timestamps(raw, self._clips, SAMPLE_RATE):
            yield self._within_audio(segment)

    def _within_audio(self, segment: Any) -> Any:
        """A timestamp token may point past a window's last sample (its 30 s frame is padded):
        times are kept inside the audio."""
        end = round(self.duration, 3)
        segment.start = min(segment.start, end)
        segment.end = min(max(segment.end, segment.start), end)
        for word in segment.words or ():
            word.start = min(max(word.start, segment.start), segment.end)
            word.end = min(max(word.end, word.start), segment.end)
        return segment

    def _windows(self) -> Iterator[Any]:
        queue: deque[_Window] = deque()
        upcoming = iter(range(len(self._chunks)))
        count = 0
        for index in upcoming:
            queue.append(self._start(index))
            if len(queue) >= self._in_flight:
                break
        while queue:
            window = queue.popleft()
            result = self._finish(window)
            rest = self._rest(window, result)
            following = next(upcoming, None) if rest is None else None
            if rest is not None:
                queue.appendleft(rest)
            elif following is not None:
                queue.append(self._start(following))
            for segment in self._segments_of(window, result):
                count += 1
                yield self._fw_segment(count, window, segment)

    def _start(self, index: int) -> _Window:
        if self._should_stop():
            raise TaskCancelled(f"cancelled before window {index + 1} of {len(self._chunks)}")
        meta = self._metadata[index]
        encoded = EncoderInput(
            audio=[np.asarray(self._chunks[index], dtype=np.float32)],
            keep=self._options.word_timestamps,  # word timing reads the encoder output again
        )
        return _Window(
            index, meta["offset"], meta["duration"], encoded, self._submit(index, encoded, 0)
        )

    def _rest(self, window: _Window, result: dict[str, Any] | None) -> _Window | None:
        """The rest of a window whose tokens end in two timestamps well before its end: the
        model stopped at a sentence it saw cut off and left it for the next window (the
        sequential Whisper seeks to that timestamp). Decoded as a window of its own."""
        if result is None or self._forced is not None:
            return None
        tokens, begin = result["tokens"], self._tokenizer.timestamp_begin
        if len(tokens) < 2 or tokens[-2] < begin or tokens[-1] < begin:
            return None
        done = (tokens[-1] - begin) * self._shell.time_precision
        if done <= 0 or window.duration - done < MIN_REST_SECONDS:
            return None
        skip = window.skip + done
        chunk = np.asarray(self._chunks[window.index], dtype=np.float32)
        encoded = EncoderInput(
            audio=[chunk[round(skip * SAMPLE_RATE) :]], keep=self._options.word_timestamps
        )
        pending = self._submit(window.index, encoded, 0)
        offset, duration = window.offset + done, window.duration - done
        return _Window(window.index, offset, duration, encoded, pending, skip=skip)

    def _finish(self, window: _Window) -> dict[str, Any] | None:
        """The window's decoding, after whatever fallback it needed; None for silence."""
        attempts: list[Attempt] = []
        while True:
            result: GenerationResult = window.pending.result()[0]
            temperature = self._temperatures[window.temperature_index]
            attempt = Attempt.of(result, temperature, self._tokenizer)
            attempts.append(attempt)
            last = window.temperature_index + 1 >= len(self._temperatures)
            if not attempt.needs_fallback or last or self._forced is not None:
                break
            window.temperature_index += 1
            window.pending = self._submit(window.index, window.encoded, window.temperature_index)
        chosen = attempt if not attempt.needs_fallback else final_attempt(attempts)
        if chosen.silent:
            return None
        return {
            "tokens": chosen.tokens,
            "avg_logprob": chosen.avg_logprob,
            "no_speech_prob": chosen.no_speech_prob,
            "compression_ratio": chosen.compression_ratio,
            "temperature": chosen.temperature,
        }

    def _segments_of(self, window: _Window, result: dict[str, Any] | None) -> list[dict[str, Any]]:
        if result is None:
            return []
        shell = self._shell
        size = int(np.ceil(window.duration) * shell.frames_per_second)
        subsegments, _, _ = shell._split_segments_by_timestamps(
            tokenizer=self._tokenizer,
            tokens=result["tokens"],
            time_offset=window.offset,
            segment_size=size,
            segment_duration=window.duration,
            seek=0,
        )
        segments = [
            {
                "text": self._tokenizer.decode(sub["tokens"]),
                "tokens": sub["tokens"],
                "start": sub["start"],
                "end": sub["end"],
                "seek": int(window.offset * shell.frames_per_second),
                **{
                    k: result[k]
                    for k in ("avg_logprob", "no_speech_prob", "compression_ratio", "temperature")
                },
            }
            for sub in subsegments
        ]
        if self._options.word_timestamps and segments:
            self._last_speech = shell.add_word_timestamps(
                [segments],
                self._tokenizer,
                window.encoded,
                [size],
                PREPEND_PUNCTUATIONS,
                APPEND_PUNCTUATIONS,
                self._last_speech,
            )
        return segments

    def _fw_segment(self, index: int, window: _Window, segment: dict[str, Any]) -> Any:
        from faster_whisper.transcribe import Segment, Word

        words = segment.get("words")
        return Segment(
            id=index,
            seek=int(window.offset * self._shell.frames_per_second),
            start=round(segment["start"], 3),
            end=round(segment["end"], 3),
            text=segment["text"],
            tokens=segment["tokens"],
            avg_logprob=segment["avg_logprob"],
            compression_ratio=segment["compression_ratio"],
            no_speech_prob=segment["no_speech_prob"],
            words=[Word(**w) for w in words] if words is not None else None,
            temperature=segment["temperature"],
        )
