"""ct2_checkpoint: a tiny random Hugging Face Whisper, converted by CTranslate2's own converter
(offline, in tmp_path), reads back as exactly the original weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpuscribe.workers.engines.ct2_checkpoint import (
    BINARY_VERSION,
    TokenizerText,
    hf_state_dict,
    load_ct2_whisper,
    read_ct2_model,
    whisper_shape,
)
from gpuscribe.workers.models import bundled_model_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
converters = pytest.importorskip("ctranslate2.converters")

LAYERS, HEADS, D_MODEL = 2, 4, 64  # 4 heads of 16: not d_model / 64, so heads come from the file


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A saved random HF Whisper (every weight random, so no two tensors are equal and
    CTranslate2 aliases none but the tied output projection) with the tiny.en tokenizer."""
    root = tmp_path_factory.mktemp("hf")
    config = transformers.WhisperConfig(
        vocab_size=51864, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=128,
        decoder_ffn_dim=128, decoder_start_token_id=50257, eos_token_id=50256,
        pad_token_id=50256, bos_token_id=50256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "embed_positions" not in name:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(root)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(bundled_model_dir() / "tokenizer.json")
    )
    tokenizer.save_pretrained(root)
    return root, model


@pytest.fixture(scope="module")
def convert(
    original: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str | None], Path]:
    made: dict[str | None, Path] = {}

    def converted(quantization: str | None) -> Path:
        if quantization not in made:
            out = tmp_path_factory.mktemp(f"ct2-{quantization}") / "model"
            converter = converters.TransformersConverter(
                str(original[0]), copy_files=["tokenizer.json"]
            )
            converter.convert(str(out), quantization=quantization)
            made[quantization] = out
        return made[quantization]

    return converted


def _expected(model: Any, dtype: Any = None) -> dict[str, Any]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.pop("proj_out.weight")  # tied to the token embeddings
    return {k: v.to(dtype) if dtype is not None else v for k, v in state.items()}


@pytest.mark.parametrize("quantization", [None, "float16"])
def test_every_tensor_reads_back_exactly(
    original: tuple[Path, Any], convert: Callable[[str | None], Path], quantization: str | None
) -> None:
    checkpoint = read_ct2_model(convert(quantization))
    assert (checkpoint.spec_name, checkpoint.revision) == ("WhisperSpec", 3)
    assert checkpoint.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    state = hf_state_dict(checkpoint)
    expected = _expected(original[1], torch.float16 if quantization else None)
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert np.array_equal(state[name], tensor.numpy()), name


def test_int8_weights_are_dequantized(
    original: tuple[Path, Any], convert: Callable[[str | None], Path]
) -> None:
    checkpoint = read_ct2_model(convert("int8"))
    assert checkpoint["encoder/conv1/weight"].dtype == "int8"
    state = hf_state_dict(checkpoint)
    for name, tensor in _expected(original[1]).items():
        rows = tensor.reshape(tensor.shape[0], -1)
        error = (torch.from_numpy(state[name]).reshape(rows.shape) - rows).abs()
        if tensor.ndim == 1:  # biases and norms stay float
            assert not bool(error.any()), name
        else:  # int8, one scale per output row: within half a step, and rounding
            step = rows.abs().amax(dim=1, keepdim=True) / 127
            assert bool(error.le(step * 0.501).all()), name


def test_shape_and_heads_come_from_the_file(convert: Callable[[str | None], Path]) -> None:
    shape = whisper_shape(read_ct2_model(convert(None)))
    assert (shape.d_model, shape.n_mels, shape.vocab_size) == (D_MODEL, 80, 51864)
    assert (shape.encoder_layers, shape.decoder_layers) == (LAYERS, LAYERS)
    assert (shape.encoder_heads, shape.decoder_heads) == (HEADS, HEADS)
    assert (shape.encoder_ffn_dim, shape.max_target_positions) == (128, 448)
    assert shape.tied_output and not shape.is_multilingual


def test_loaded_model_computes_what_the_original_does(
    original: tuple[Path, Any], convert: Callable[[str | None], Path]
) -> None:
    model, info = load_ct2_whisper(convert(None), "cpu", torch.float32)
    assert not model.training and model.dtype == torch.float32
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight
    torch.manual_seed(1)
    features = torch.randn(1, 80, 3000)
    tokens = torch.tensor([[50257, 50362, 383, 2068]])
    with torch.inference_mode():
        ours = model(input_features=features, decoder_input_ids=tokens).logits
        theirs = original[1](input_features=features, decoder_input_ids=tokens).logits
    assert torch.equal(ours, theirs)
    assert (info.end_of_text, info.start_of_transcript, info.no_timestamps) == (50256, 50257, 50362)
    assert info.alignment_heads == ((1, 0), (1, 1), (1, 2), (1, 3))  # the converter's default
    assert not info.is_multilingual and info.n_mels == 80
    assert model.generation_config.no_timestamps_token_id == 50362


def test_tokenizer_text_skips_ids_it_lacks(convert: Callable[[str | None], Path]) -> None:
    _, info = load_ct2_whisper(convert(None))
    text = TokenizerText.of(info)
    assert text.english_only
    assert text.decode([50257, 50362, 383, 2068, 7586, 21831, 13, 50363, 50256]) == (
        "The quick brown fox."
    )


def test_a_truncated_file_is_a_clear_error(
    convert: Callable[[str | None], Path], tmp_path: Path
) -> None:
    data = (convert(None) / "model.bin").read_bytes()
    for cut in (2, 20, len(data) // 2, len(data) - 3):
        (tmp_path / "model.bin").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"model\.bin: truncated: .* at offset"):
            read_ct2_model(tmp_path)


def test_another_version_is_a_clear_error(
    convert: Callable[[str | None], Path], tmp_path: Path
) -> None:
    data = bytearray((convert(None) / "model.bin").read_bytes())
    data[:4] = (BINARY_VERSION - 1).to_bytes(4, "little")
    (tmp_path / "model.bin").write_bytes(data)
    with pytest.raises(ValueError, match=r"model\.bin: binary format version 5, .* only 6"):
        read_ct2_model(tmp_path / "model.bin")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        read_ct2_model(tmp_path)


def test_heads_fall_back_to_the_given_count_then_64_wide(
    convert: Callable[[str | None], Path],
) -> None:
    model = read_ct2_model(convert(None))
    stripped = type(model)(
        model.path, model.spec_name, model.revision,
        {k: v for k, v in model.variables.items() if not k.endswith("num_heads")}, model.aliases,
    )  # fmt: skip
    assert whisper_shape(stripped).encoder_heads == 1  # d_model 64 / 64
    assert whisper_shape(stripped, heads=HEADS).decoder_heads == HEADS


# A fresh interpreter, so that transformers is imported for the first time by four threads at
# once (lazily resolved names failed like this on an H100 before the engine's import lock).
LOAD_FROM_THREADS = textwrap.dedent(
    """
    import sys, threading
    from gpuscribe.workers.engines.ct2_checkpoint import load_ct2_whisper

    barrier, errors = threading.Barrier(4), []

    def load():
        barrier.wait()
        try:
            load_ct2_whisper(sys.argv[1])
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("errors:", errors)
    """
)


def test_loads_from_threads_in_a_fresh_process(convert: Callable[[str | None], Path]) -> None:
    args = [sys.executable, "-c", LOAD_FROM_THREADS, str(convert(None))]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "errors: []" in done.stdout, done.stdout
