"""The transformers engine (PyTorch): Whisper in float16 on CUDA, float32 on the CPU.

Audio is cut into 30 s windows, `batch_size` windows per `generate` call. A real checkpoint
comes from the models directory (a Hugging Face checkpoint, or a CTranslate2 one such as the
bundled tiny.en, converted on load by `ct2_checkpoint`); in benchmark-only mode the published
architecture is built with random weights (fixed seed) to measure memory and speed: its output
is not a transcript.
torch and transformers are imported inside the engine, never by the scheduler process.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gpuscribe.domain import Segment, Transcript, TranscriptionOptions
from gpuscribe.memory.architectures import ARCHITECTURES, WhisperArchitecture
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines.ct2_checkpoint import TokenizerText, load_ct2_whisper
from gpuscribe.workers.messages import DeviceRef
from gpuscribe.workers.models import (
    CT2,
    TRANSFORMERS,
    ModelSource,
    bundled_model_dir,
    resolve_model,
)

log = logging.getLogger(__name__)

# Two tasks loading two random-weight models at once in one worker would otherwise build one
# of them with the other's default dtype (seen on an H100: half and float weights mixed).
_DEFAULT_DTYPE_LOCK = threading.Lock()
# transformers resolves its names lazily, on first use, and two threads resolving them at once
# can fail (seen on an H100, tasks starting together: "cannot import name 'GenerationConfig'
# from 'transformers'"): every name this engine takes from transformers goes through `_hf`.
_IMPORT_LOCK = threading.Lock()

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30
MAX_NEW_TOKENS = 224  # Whisper's per-window maximum (448 positions, half for the prompt)
RANDOM_SEED = 0
_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}
# Tokens of the bundled English-only vocabulary, used by random-weight models.
_EN_END_OF_TEXT = 50256
_EN_START_OF_TRANSCRIPT = 50257
_EN_VOCAB_SIZE = 51864

TEST_ARCHITECTURE = WhisperArchitecture(
    "test-tiny", d_model=64, encoder_layers=2, decoder_layers=2, attention_heads=4,
    vocab_size=51864, english_only=True,
)  # fmt: skip


class TransformersEngine:
    name = TRANSFORMERS

    def __init__(
        self,
        models_dir: str = "",
        benchmark_only: bool = False,
        tiny_config_for_tests: bool = False,
        allow_downloads: bool = False,
        benchmark_tokens: int = MAX_NEW_TOKENS,
    ):
        self.benchmark_tokens = benchmark_tokens
        self.models_dir = models_dir
        self.allow_downloads = allow_downloads
        self.benchmark_only = benchmark_only or tiny_config_for_tests
        self.tiny_config_for_tests = tiny_config_for_tests

    def load(self, model: str, device: DeviceRef, compute_type: str) -> TransformersModel:
        import torch

        source = resolve_model(
            model,
            TRANSFORMERS,
            models_dir=self.models_dir,
            allow_downloads=self.allow_downloads and not self.tiny_config_for_tests,
            benchmark_only=self.benchmark_only,
        )
        if self.tiny_config_for_tests:
            source = ModelSource(source.name, TRANSFORMERS, None, benchmark_only=True)
        cuda = device.kind == DeviceKind.CUDA
        if cuda:
            _configure_cuda(torch)
        target = _Target(torch.device("cuda:0" if cuda else "cpu"), _dtype(compute_type, cuda))
        decoder: TokenDecoder
        if source.path is not None and source.format == CT2:  # e.g. the bundled tiny.en
            whisper, info = load_ct2_whisper(source.path, target.device, target.dtype)
            decoder = TokenizerText.of(info)
        elif source.path is not None or source.download:
            where = source.path or source.hub_id
            whisper, decoder = _load_checkpoint(where, target), CheckpointText(where)
        else:
            arch = TEST_ARCHITECTURE if self.tiny_config_for_tests else ARCHITECTURES[source.name]
            whisper, decoder = _build_random(arch, target), BundledText()
        whisper.eval()
        weights = _parameter_bytes(whisper)
        kind = "random weights, benchmark only" if source.benchmark_only else "checkpoint"
        log.info(
            "loaded %s (%s) on %s: %d bytes of weights", source.name, kind, target.device, weights
        )
        model_ = TransformersModel(whisper, decoder, target, weights, source.benchmark_only)
        model_.benchmark_tokens = self.benchmark_tokens
        return model_


class TokenDecoder(Protocol):
    english_only: bool

    def decode(self, ids: list[int]) -> str: ...

    def language_code(self, token_id: int) -> str | None: ...


class CheckpointText:
    """Token ids to text with the tokenizer saved in a checkpoint directory."""

    def __init__(self, path: str):
        (AutoTokenizer,) = _hf("AutoTokenizer")

        self._tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.english_only = len(self._tokenizer) <= _EN_VOCAB_SIZE

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True)).strip()

    def language_code(self, token_id: int) -> str | None:
        token = str(self._tokenizer.convert_ids_to_tokens(token_id))
        return token.removeprefix("<|").removesuffix("|>") or None


class BundledText:
    """Token ids to text with the bundled tiny.en vocabulary, for random-weight models: ids
    it lacks are skipped (what they say is noise anyway)."""

    english_only = True

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        try:
            path = bundled_model_dir() / "tokenizer.json"
            self._tokenizer: Any = Tokenizer.from_file(str(path))
            self._size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        except (ImportError, OSError, ValueError, RuntimeError) as exc:
            # GPU machines may lack the bundled model: the text of a random model is noise anyway.
            log.info("no bundled tokenizer (%s): benchmark outputs show token counts", exc)
            self._tokenizer = None
            self._size = 0

    def decode(self, ids: list[int]) -> str:
        if self._tokenizer is None:
            return f"[benchmark only: {len(ids)} tokens]"
        known = [i for i in ids if 0 <= i < self._size]
        return str(self._tokenizer.decode(known, skip_special_tokens=True)).strip()

    def language_code(self, token_id: int) -> str | None:
        return "en"


@dataclass(frozen=True, slots=True)
class _Target:
    device: Any  # torch.device
    dtype: Any  # torch.dtype


class TransformersModel:
    def __init__(
        self, whisper: Any, decoder: TokenDecoder, target: _Target, weights: int, benchmark: bool
    ):
        (WhisperFeatureExtractor,) = _hf("WhisperFeatureExtractor")

        self._whisper: Any = whisper
        self._decoder = decoder
        self._target = target
        self.weights_bytes = weights
        self.benchmark_only = benchmark
        self.benchmark_tokens = MAX_NEW_TOKENS  # random weights decode exactly this many
        n_mels = int(whisper.config.num_mel_bins)
        self._features = WhisperFeatureExtractor(  # type: ignore[no-untyped-call]
            feature_size=n_mels, sampling_rate=SAMPLE_RATE
        )

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        options: TranscriptionOptions,
        on_segment: Callable[[Segment, float], None],
        should_stop: Callable[[], bool],
    ) -> Transcript:
        if should_stop():
            raise TaskCancelled("cancelled before it started")
        duration = audio.size / SAMPLE_RATE
        windows = _windows(audio)
        language = self._language(windows[0], options)
        segments: list[Segment] = []
        for first in range(0, len(windows), max(1, options.batch_size)):
            if should_stop():
                raise TaskCancelled(f"cancelled after {first} of {len(windows)} windows")
            batch = windows[first : first + max(1, options.batch_size)]
            texts, tokens = self._generate(batch, options, language, should_stop)
            for text, ids in zip(texts, tokens, strict=True):
                segment = _segment(len(segments), text, ids, duration)
                segments.append(segment)
                on_segment(segment, len(segments) / len(windows))
        return Transcript(
            text=" ".join(s.text for s in segments if s.text).strip(),
            language=language,
            duration=duration,
            segments=tuple(segments),
            task=options.task,
            benchmark_only=self.benchmark_only,
        )

    def _generate(
        self,
        batch: list[npt.NDArray[np.float32]],
        options: TranscriptionOptions,
        language: str | None,
        should_stop: Callable[[], bool],
    ) -> tuple[list[str], list[list[int]]]:
        import torch

        (StoppingCriteriaList,) = _hf("StoppingCriteriaList")

        kwargs: dict[str, Any] = {
            "num_beams": max(1, options.beam_size),
            "max_new_tokens": MAX_NEW_TOKENS,
            "stopping_criteria": StoppingCriteriaList([_stop_criterion(should_stop)]),
        }
        if self.benchmark_only:  # a fixed length: the worst case (224) unless told otherwise
            kwargs["min_new_tokens"] = kwargs["max_new_tokens"] = self.benchmark_tokens
        elif self._multilingual():
            kwargs.update(language=language, task=options.task.value)
        with torch.inference_mode():
            output = self._whisper.generate(self._input(batch), **kwargs)
        if should_stop():
            raise TaskCancelled("cancelled during generation")
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        ids = [[int(t) for t in row] for row in sequences.tolist()]
        return [self._decoder.decode(row) for row in ids], ids

    def _input(self, batch: list[npt.NDArray[np.float32]]) -> Any:
        features = self._features(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return features.input_features.to(self._target.device, self._target.dtype)

    def _multilingual(self) -> bool:
        return bool(getattr(self._whisper.generation_config, "is_multilingual", False))

    def _language(
        self, first: npt.NDArray[np.float32], options: TranscriptionOptions
    ) -> str | None:
        """The language asked for; else, where the model is multilingual, the one detected in the
        first window (as faster-whisper does); else English for English-only models."""
        if options.language:
            return options.language
        if self.benchmark_only or not self._multilingual():
            return "en" if self._decoder.english_only else None
        import torch

        with torch.inference_mode():
            token = self._whisper.detect_language(self._input([first]))
        return self._decoder.language_code(int(token.flatten()[0]))

    def unload(self) -> None:
        whisper, self._whisper = self._whisper, None
        del whisper
        gc.collect()
        if self._target.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def _hf(*names: str) -> tuple[Any, ...]:
    """Names from transformers, resolved one thread at a time (see `_IMPORT_LOCK`)."""
    with _IMPORT_LOCK:
        import transformers

        return tuple(getattr(transformers, name) for name in names)


def _configure_cuda(torch: Any) -> None:
    """Attention through cuDNN off: with several tasks generating at once in one worker it
    failed on an H100 (PyTorch 2.11: "mha_graph.execute(...).is_good()" errors, 24 in a
    300-task stream); the flash and memory-efficient kernels serve the same shapes."""
    torch.backends.cuda.enable_cudnn_sdp(False)


def _stop_criterion(should_stop: Callable[[], bool]) -> Any:
    import torch

    (StoppingCriteria,) = _hf("StoppingCriteria")

    class StopWhenAsked(StoppingCriteria):  # type: ignore[misc,valid-type]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            stop = bool(should_stop())
            return torch.full(
                (input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device
            )

    return StopWhenAsked()


def _windows(audio: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    step = WINDOW_SECONDS * SAMPLE_RATE
    count = max(1, int(np.ceil(audio.size / step)))
    return [audio[i * step : (i + 1) * step] for i in range(count)]


def _segment(index: int, text: str, ids: list[int], duration: float) -> Segment:
    start = float(index * WINDOW_SECONDS)
    end = min(float((index + 1) * WINDOW_SECONDS), duration)
    return Segment(id=index, start=start, end=end, text=text, tokens=tuple(ids))


def _dtype(compute_type: str, cuda: bool) -> Any:
    import torch

    if compute_type in ("default", "auto"):
        return torch.float16 if cuda else torch.float32
    if compute_type not in _DTYPES:
        known = ", ".join(["default", *_DTYPES])
        raise ValueError(f"compute type {compute_type!r} is not one of {known} for transformers")
    return getattr(torch, _DTYPES[compute_type])


def _load_checkpoint(path: str, target: _Target) -> Any:
    (WhisperForConditionalGeneration,) = _hf("WhisperForConditionalGeneration")

    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=target.dtype)
    return model.to(target.device)


def _build_random(arch: WhisperArchitecture, target: _Target) -> Any:
    import torch

    GenerationConfig, WhisperConfig, WhisperForConditionalGeneration = _hf(
        "GenerationConfig", "WhisperConfig", "WhisperForConditionalGeneration"
    )

    config = WhisperConfig(
        vocab_size=arch.vocab_size,
        num_mel_bins=arch.n_mels,
        d_model=arch.d_model,
        encoder_layers=arch.encoder_layers,
        decoder_layers=arch.decoder_layers,
        encoder_attention_heads=arch.attention_heads,
        decoder_attention_heads=arch.attention_heads,
        encoder_ffn_dim=arch.ffn_dim,
        decoder_ffn_dim=arch.ffn_dim,
        max_source_positions=arch.max_source_positions,
        max_target_positions=arch.max_target_positions,
        decoder_start_token_id=_EN_START_OF_TRANSCRIPT,
        eos_token_id=_EN_END_OF_TEXT,
        pad_token_id=_EN_END_OF_TEXT,
        bos_token_id=_EN_END_OF_TEXT,
    )
    with _DEFAULT_DTYPE_LOCK:  # the default dtype is process-wide: one build at a time
        torch.manual_seed(RANDOM_SEED)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(target.dtype)
        try:
            with target.device:
                model = WhisperForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        decoder_start_token_id=_EN_START_OF_TRANSCRIPT,
        eos_token_id=_EN_END_OF_TEXT,
        pad_token_id=_EN_END_OF_TEXT,
        is_multilingual=False,
        max_length=arch.max_target_positions,
    )
    return model


def _parameter_bytes(model: Any) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return int(sum(t.numel() * t.element_size() for t in tensors))
