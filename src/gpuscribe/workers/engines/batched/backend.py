"""CTranslate2's Whisper interface (`encode`, `generate`, `detect_language`, `align`) served by
the continuous batch, so that faster-whisper's well-tested transcription logic (segments from
timestamps, temperature fallback, prompts, VAD, word timing) drives the PyTorch model unchanged.

Calls come from task threads; each names the task's priority and stop flag through
`TaskContext`, which the engine sets per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuscribe.workers.engines.batched.alignment import alignment_matrix, negative_dtw
from gpuscribe.workers.engines.batched.batcher import Batcher, EncoderInput, GenerationResult
from gpuscribe.workers.engines.batched.search import DecodeOptions


@dataclass(slots=True)
class TaskContext:
    priority: int = 0
    should_stop: Callable[[], bool] = field(default=lambda: False)


_context = threading.local()


def set_context(context: TaskContext | None) -> None:
    _context.value = context


def current_context() -> TaskContext:
    value = getattr(_context, "value", None)
    return value if isinstance(value, TaskContext) else TaskContext()


@dataclass(frozen=True, slots=True)
class AlignmentResult:
    alignments: list[tuple[int, int]]
    text_token_probs: list[float]


class BatchedWhisper:
    """What faster-whisper's `WhisperModel.model` (a `ctranslate2.models.Whisper`) offers."""

    def __init__(
        self,
        batcher: Batcher,
        *,
        multilingual: bool,
        n_mels: int,
        lang_ids: tuple[int, ...],
        lang_tokens: tuple[str, ...],
        alignment_heads: tuple[tuple[int, int], ...],
        device: str,
    ) -> None:
        self.batcher = batcher
        self.is_multilingual = multilingual
        self.n_mels = n_mels
        self.num_languages = len(lang_ids)
        self.device = device
        self.device_index = [0]
        self._lang_ids = lang_ids
        self._lang_tokens = lang_tokens
        self._heads = alignment_heads

    def encode(self, features: Any, to_cpu: bool = False) -> EncoderInput:
        array = np.asarray(features, dtype=np.float32)
        if array.ndim == 2:
            array = array[None]
        return EncoderInput(features=array)

    def generate(
        self,
        encoder_output: EncoderInput,
        prompts: list[list[int]],
        *,
        beam_size: int = 1,
        patience: float = 1.0,
        num_hypotheses: int = 1,
        length_penalty: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        max_length: int = 448,
        return_scores: bool = False,
        return_no_speech_prob: bool = False,
        max_initial_timestamp_index: int = 50,
        suppress_blank: bool = True,
        suppress_tokens: list[int] | None = None,
        sampling_topk: int = 1,
        sampling_temperature: float = 1.0,
        **unsupported: Any,
    ) -> list[GenerationResult]:
        if repetition_penalty != 1.0 or no_repeat_ngram_size or unsupported:
            names = [*unsupported]
            if repetition_penalty != 1.0:
                names.append("repetition_penalty")
            if no_repeat_ngram_size:
                names.append("no_repeat_ngram_size")
            raise ValueError(f"the transformers engine does not support {', '.join(names)}")
        context = current_context()
        options = DecodeOptions(
            beam_size=max(1, beam_size),
            patience=patience,
            length_penalty=length_penalty,
            max_length=max_length,
            suppress_blank=suppress_blank,
            suppress_tokens=tuple(suppress_tokens if suppress_tokens is not None else [-1]),
            sampling_temperature=sampling_temperature,
            sampling_topk=sampling_topk,
            num_hypotheses=max(1, num_hypotheses),
            max_initial_timestamp_index=max_initial_timestamp_index,
            return_no_speech_prob=return_no_speech_prob,
        )
        return self.batcher.generate(
            encoder_output,
            [list(p) for p in prompts],
            options,
            priority=context.priority,
            should_stop=context.should_stop,
        )

    def detect_language(self, encoder_output: EncoderInput) -> list[list[tuple[str, float]]]:
        if not self.is_multilingual:
            raise RuntimeError("detect_language can only be called on multilingual models")
        context = current_context()
        return self.batcher.call(  # type: ignore[no-any-return]
            lambda: self._detect(encoder_output), should_stop=context.should_stop
        )

    def _detect(self, encoder_output: EncoderInput) -> list[list[tuple[str, float]]]:
        torch = self.batcher._torch
        decoder = self.batcher.decoder
        hidden = torch.stack(self.batcher.hidden(encoder_output))
        sot = self.batcher.vocabulary.sot
        tokens = torch.full((hidden.shape[0], 1), sot, dtype=torch.long, device=decoder.device)
        logits, _ = decoder.teacher_forced(hidden, tokens, [])
        ids = torch.tensor(self._lang_ids, device=decoder.device)
        probs = logits[:, 0, ids].softmax(-1).tolist()
        return [
            sorted(zip(self._lang_tokens, row, strict=True), key=lambda p: p[1], reverse=True)
            for row in probs
        ]

    def align(
        self,
        encoder_output: EncoderInput,
        start_sequence: list[int],
        text_tokens: list[list[int]],
        num_frames: int | list[int],
        median_filter_width: int = 7,
    ) -> list[AlignmentResult]:
        if not self._heads:
            raise RuntimeError("the model has no alignment heads: word timestamps are unavailable")
        frames = num_frames if isinstance(num_frames, list) else [num_frames] * len(text_tokens)
        context = current_context()
        return self.batcher.call(  # type: ignore[no-any-return]
            lambda: self._align(
                encoder_output, start_sequence, text_tokens, frames, median_filter_width
            ),
            should_stop=context.should_stop,
        )

    def _align(
        self,
        encoder_output: EncoderInput,
        start_sequence: list[int],
        text_tokens: list[list[int]],
        num_frames: list[int],
        median_width: int,
    ) -> list[AlignmentResult]:
        torch = self.batcher._torch
        decoder = self.batcher.decoder
        v = self.batcher.vocabulary
        hidden = self.batcher.hidden(encoder_output)
        results = []
        for index, text in enumerate(text_tokens):
            tokens = [*start_sequence, v.no_timestamps, *text, v.eot]
            ids = torch.tensor([tokens], dtype=torch.long, device=decoder.device)
            logits, scores = decoder.teacher_forced(hidden[index][None], ids, list(self._heads))
            offset = len(start_sequence)
            probs = logits[0, :, : v.eot].softmax(-1)
            targets = torch.tensor(
                tokens[offset + 1 : offset + 1 + len(text)], device=decoder.device
            )
            picked = probs[offset : offset + len(text)].gather(1, targets[:, None])[:, 0]
            matrix = alignment_matrix(scores[0].cpu().numpy(), num_frames[index], median_width)
            path = negative_dtw(matrix[offset : offset + len(text) + 1])
            results.append(AlignmentResult(path, [float(p) for p in picked.tolist()]))
        return results
