"""batched/encoder.py on a tiny random Whisper, on the CPU: the fused encoder gives Hugging
Face's output from the same weights, and the module it was made from still runs on them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpuscribe.workers.engines.batched.encoder import FusedEncoder

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_the_fused_encoder_gives_hugging_faces_output(whisper: Any) -> None:
    module = whisper.model.encoder
    frames = 2 * module.config.max_source_positions
    features = torch.randn(3, module.conv1.in_channels, frames)
    with torch.inference_mode():
        before = module(features).last_hidden_state
    fused = FusedEncoder(module)  # the module's own weights become views of the fused ones
    with torch.inference_mode():
        after = module(features).last_hidden_state
    assert torch.allclose(fused(features), before, atol=1e-4, rtol=1e-4)
    assert torch.equal(after, before)
    layer = module.layers[0].self_attn
    assert layer.k_proj.weight.data_ptr() == fused._layers[0].qkv_w[layer.embed_dim :].data_ptr()


def test_the_encoder_falls_back_to_pytorchs_attention_where_cudnn_cannot_run(
    whisper: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """On the CPU cuDNN's attention does not exist: the first call in half precision says so in
    the log, runs PyTorch's attention, and later calls do not try cuDNN again."""
    module = copy.deepcopy(whisper.model.encoder).to(torch.bfloat16)
    features = torch.randn(2, module.conv1.in_channels, 2 * module.config.max_source_positions)
    features = features.to(torch.bfloat16)
    with torch.inference_mode():
        expected = module(features).last_hidden_state.float()
    fused = FusedEncoder(module, cudnn_attention=True)
    with caplog.at_level("WARNING"):
        first = fused(features).float()
    assert fused.cudnn_attention is False
    assert "cuDNN attention failed" in caplog.text
    assert torch.allclose(first, expected, atol=0.05)
    assert torch.allclose(fused(features).float(), expected, atol=0.05)


def test_float32_never_calls_cudnns_attention(
    whisper: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """cuDNN's kernel serves half precision only, and called by name it does not refuse
    float32 (on an H100 it gave NaN): a float32 encoder does not call it at all."""
    module = whisper.model.encoder
    features = torch.randn(2, module.conv1.in_channels, 2 * module.config.max_source_positions)
    with torch.inference_mode():
        expected = module(features).last_hidden_state
    fused = FusedEncoder(module, cudnn_attention=True)
    with caplog.at_level("WARNING"):
        out = fused(features)
    assert fused.cudnn_attention is True and "cuDNN" not in caplog.text  # never tried
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4)
