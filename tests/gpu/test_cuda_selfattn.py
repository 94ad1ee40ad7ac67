"""On a real CUDA GPU: the self-attention that reads each row's own positions only
(`batched/selfattn.py`) gives PyTorch's masked attention at large-v3's shape in float16, and a
decode step captured in a CUDA graph with it follows the positions written between replays
(the kernel's loop bound is read on the device). Run with `make test-gpu`."""

from __future__ import annotations

from typing import Any

import pytest

from gpuscribe.workers.engines.batched import selfattn
from gpuscribe.workers.engines.batched.decoder import StaticDecoder, spread_positions
from gpuscribe.workers.engines.transformers_engine import (
    TEST_ARCHITECTURE,
    _build_random,
    _Target,
)

pytestmark = pytest.mark.gpu


def _require_kernel() -> Any:
    torch = pytest.importorskip("torch")
    if not selfattn.triton_works("cuda:0"):
        pytest.skip("Triton is not available")
    return torch


def test_the_kernel_attends_as_the_masked_form_at_large_v3s_shape() -> None:
    torch = _require_kernel()
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows, heads, max_len, dim = 48, 20, 448, 64
    options = {"device": "cuda", "dtype": torch.float16, "generator": generator}
    keys = torch.randn(rows, heads, max_len, dim, **options)
    values = torch.randn(rows, heads, max_len, dim, **options)
    fused = torch.randn(rows, 1, 3 * heads * dim, **options)
    q = fused[..., : heads * dim].view(rows, 1, heads, dim).transpose(1, 2)
    positions = torch.tensor(spread_positions(rows, max_len), device="cuda")
    for length in (448, 256, 64):
        out = torch.zeros(rows, heads, 1, dim, device="cuda", dtype=torch.float16)
        selfattn.attend(q, keys, values, positions, length, out)
        expected = selfattn.attend_masked(torch, q, keys, values, positions, length)
        assert torch.allclose(out.float(), expected.float(), atol=2e-3), length


def test_a_captured_ragged_step_follows_the_positions_of_each_replay() -> None:
    torch = _require_kernel()
    whisper = _build_random(TEST_ARCHITECTURE, _Target(torch.device("cuda"), torch.float32))
    generator = torch.Generator(device="cuda").manual_seed(1)
    frames, width = TEST_ARCHITECTURE.max_source_positions, TEST_ARCHITECTURE.d_model
    hidden = torch.randn(6, frames, width, device="cuda", generator=generator)
    tokens = torch.randint(0, 50000, (6, 100), device="cuda", generator=generator)
    logits = {}
    for kind in ("sdpa", "ragged"):
        decoder = StaticDecoder(whisper.eval(), 8, use_graphs=True)
        decoder.set_attention(kind)
        decoder.fill_cross(torch.arange(6, device="cuda"), hidden)
        stepped = []
        for step in range(100):  # rows 20 positions apart, crossing blocks of 64 positions
            decoder.tokens[:6] = tokens[:, step]
            decoder.positions[:6] = torch.arange(6, device="cuda") * 20 + step
            stepped.append(decoder.step(6, 100 + step).clone())
        logits[kind] = torch.stack(stepped)
        assert len(decoder._graphs) >= 2  # captured, at several lengths
    assert torch.allclose(logits["ragged"], logits["sdpa"], atol=2e-3)
