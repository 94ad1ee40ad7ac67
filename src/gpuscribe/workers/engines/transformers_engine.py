"""The transformers engine (PyTorch): Whisper in float16 on CUDA, float32 on the CPU.

Every model a worker loads gets one continuous batch (`engines/batched/`): all of its tasks'
windows decode together over a static key/value cache, in CUDA graphs on GPUs. A real checkpoint
comes from the models directory (a Hugging Face checkpoint, or a CTranslate2 one such as the
bundled tiny.en, converted on load by `ct2_checkpoint`); in benchmark-only mode the published
architecture is built with random weights (fixed seed) to measure memory and speed: its output
is not a transcript. torch and transformers are imported inside the engine, never by the
scheduler process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from gpuscribe.domain import InvalidRequest
from gpuscribe.memory.architectures import ARCHITECTURES, WhisperArchitecture
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.engines.batched import crossattn
from gpuscribe.workers.engines.batched.model import BatchedModel, ModelInfo
from gpuscribe.workers.engines.ct2_checkpoint import Ct2WhisperInfo, load_ct2_whisper
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

DEFAULT_ROWS_CUDA = 256  # sequences decoded at once on a GPU (rows of the static cache)
DEFAULT_ROWS_CPU = 32
MAX_NEW_TOKENS = 224  # Whisper's per-window maximum (448 positions, half for the prompt)
RANDOM_SEED = 0
_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}
# Tokens of the bundled English-only vocabulary, used by random-weight models.
_EN_END_OF_TEXT = 50256
_EN_START_OF_TRANSCRIPT = 50257

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
        batch_rows: int = 0,
        batch_layout: str = "auto",
    ):
        self.benchmark_tokens = benchmark_tokens
        self.batch_rows = batch_rows
        self.batch_layout = batch_layout  # "auto", "per-row" or "pooled" (`batched/slots.py`)
        self.models_dir = models_dir
        self.allow_downloads = allow_downloads
        self.benchmark_only = benchmark_only or tiny_config_for_tests
        self.tiny_config_for_tests = tiny_config_for_tests

    def load(
        self, model: str, device: DeviceRef, compute_type: str, batch_rows: int = 0
    ) -> BatchedModel:
        """`batch_rows`: the rows the scheduler's ledger charged for this model's batch on this
        device (`memory/batch.py`); 0: this engine's `batch_rows`, else its default."""
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
        if source.path is not None and source.format == CT2:  # e.g. the bundled tiny.en
            whisper, ct2 = load_ct2_whisper(source.path, target.device, target.dtype)
            info = _ct2_info(ct2)
        elif source.path is not None or source.download:
            where = source.path or source.hub_id
            whisper = _load_checkpoint(where, target)
            info = _checkpoint_info(whisper, where)
        else:
            arch = TEST_ARCHITECTURE if self.tiny_config_for_tests else ARCHITECTURES[source.name]
            whisper, info = _build_random(arch, target), _random_info(arch)
        whisper.eval()
        weights = _parameter_bytes(whisper)
        rows = batch_rows or self.batch_rows or (DEFAULT_ROWS_CUDA if cuda else DEFAULT_ROWS_CPU)
        model_ = BatchedModel(
            whisper,
            info,
            rows=rows,
            pooled=self._pooled(target),
            use_graphs=cuda,
            weights_bytes=weights,
            benchmark_only=source.benchmark_only,
            benchmark_tokens=self.benchmark_tokens,
        )
        kind = "random weights, benchmark only" if source.benchmark_only else "checkpoint"
        log.info(
            "loaded %s (%s) on %s: %d bytes of weights, %d batch rows (%d bytes of cache%s)",
            source.name, kind, target.device, weights, rows, model_.cache_bytes,
            f", pooled: steps of up to {model_.decoder.rows} rows" if model_.decoder.pooled else "",
        )  # fmt: skip
        return model_

    def _pooled(self, target: _Target) -> bool:
        """Whether the batch's cache is pooled (`batched/slots.py`). "auto": on CUDA where the
        Triton cross-attention that reads a window's slot passes its trial (on an H100, 5 beams
        decode 1.49 x as fast as per-row and greedy windows as fast, within 3 %); the CPU
        keeps the per-row cache, whose steps read it through PyTorch's fused kernel.
        "pooled" on the CPU reads the slots through a gathered copy (tests)."""
        if self.batch_layout == "per-row":
            return False
        cuda = target.device.type == "cuda"
        if not cuda:
            return self.batch_layout == "pooled"
        if crossattn.triton_works(str(target.device)):
            return True
        log.warning("the Triton cross-attention failed on %s: the batch's cache is per-row, "
                    "a copy of a window's audio in every row", target.device)  # fmt: skip
        return False


def _ct2_info(info: Ct2WhisperInfo) -> ModelInfo:
    if info.tokenizer_path is None:
        raise InvalidRequest(f"{info.path} has no tokenizer.json", code="model_not_found")
    return ModelInfo(
        tokenizer_file=str(info.tokenizer_path),
        multilingual=info.is_multilingual,
        n_mels=info.n_mels,
        lang_ids=info.lang_ids,
        lang_tokens=_token_names(str(info.tokenizer_path), info.lang_ids),
        alignment_heads=info.alignment_heads,
        suppress_ids=info.suppress_ids,
        suppress_ids_begin=info.suppress_ids_begin,
    )


def _checkpoint_info(whisper: Any, where: str) -> ModelInfo:
    """A Hugging Face checkpoint's tokenizer and generation config."""
    from pathlib import Path

    tokenizer = Path(where) / "tokenizer.json"
    if not tokenizer.is_file():
        from huggingface_hub import hf_hub_download

        tokenizer = Path(hf_hub_download(where, "tokenizer.json"))
    generation = whisper.generation_config
    languages = dict(getattr(generation, "lang_to_id", None) or {})
    heads = getattr(generation, "alignment_heads", None) or ()
    return ModelInfo(
        tokenizer_file=str(tokenizer),
        multilingual=bool(getattr(generation, "is_multilingual", False)),
        n_mels=int(whisper.config.num_mel_bins),
        lang_ids=tuple(int(i) for i in languages.values()),
        lang_tokens=tuple(str(t) for t in languages),
        alignment_heads=tuple((int(layer), int(head)) for layer, head in heads),
        suppress_ids=tuple(int(i) for i in getattr(generation, "suppress_tokens", None) or ()),
        suppress_ids_begin=tuple(
            int(i) for i in getattr(generation, "begin_suppress_tokens", None) or ()
        ),
    )


def _random_info(arch: WhisperArchitecture) -> ModelInfo:
    """Random weights speak no language: prompts and rules use the bundled English vocabulary."""
    tokenizer = bundled_model_dir() / "tokenizer.json"
    return ModelInfo(
        tokenizer_file=str(tokenizer),
        multilingual=False,
        n_mels=arch.n_mels,
        lang_ids=(),
        lang_tokens=(),
        alignment_heads=(),
        suppress_ids=(),
        suppress_ids_begin=(),
    )


def _token_names(tokenizer_file: str, ids: tuple[int, ...]) -> tuple[str, ...]:
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
    return tuple(str(tokenizer.id_to_token(i)) for i in ids)


@dataclass(frozen=True, slots=True)
class _Target:
    device: Any  # torch.device
    dtype: Any  # torch.dtype


def _hf(*names: str) -> tuple[Any, ...]:
    """Names from transformers, resolved one thread at a time (see `_IMPORT_LOCK`)."""
    with _IMPORT_LOCK:
        import transformers

        return tuple(getattr(transformers, name) for name in names)


def _configure_cuda(torch: Any) -> None:
    """Attention through cuDNN off: with several tasks generating at once in one worker it
    failed on an H100 (PyTorch 2.11: "mha_graph.execute(...).is_good()" errors, 24 in a
    300-task stream); the flash and memory-efficient kernels serve the same shapes. The batched
    decode step asks for cuDNN's kernel by name for its cross-attention, where it is twice as
    fast (`batched/decoder._cudnn_first`): that step runs on one thread and in a CUDA graph."""
    torch.backends.cuda.enable_cudnn_sdp(False)


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
