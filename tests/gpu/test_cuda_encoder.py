"""On a real CUDA GPU: the engine's fused encoder gives Hugging Face's encoder output, in
float32 (where cuDNN's attention, which serves half precision only, must not be called) and in
float16. Run with `make test-gpu`."""

from __future__ import annotations

import pytest

from gpuscribe.workers.engines.batched.decoder import StaticDecoder
from gpuscribe.workers.engines.transformers_engine import (
    TEST_ARCHITECTURE,
    _build_random,
    _Target,
)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-3), ("float16", 3e-2)])
def test_the_fused_encoder_gives_hugging_faces_output(dtype: str, tolerance: float) -> None:
    torch = pytest.importorskip("torch")
    target = _Target(torch.device("cuda"), getattr(torch, dtype))
    whisper = _build_random(TEST_ARCHITECTURE, target).eval()
    decoder = StaticDecoder(whisper, 8, use_graphs=False)
    generator = torch.Generator(device="cuda").manual_seed(1)
    frames = 2 * TEST_ARCHITECTURE.max_source_positions
    features = torch.randn(6, TEST_ARCHITECTURE.n_mels, frames, generator=generator,
                           device="cuda").to(target.dtype)  # fmt: skip
    fused = decoder.encode(features).float()
    with torch.inference_mode():
        expected = decoder.hf_encoder(features).last_hidden_state.float()
    assert not fused.isnan().any()
    assert (fused - expected).abs().max().item() < tolerance
