"""On a real CUDA GPU: beams chosen on the device. The Triton row copy copies what the plain
PyTorch copy does, also past 2**31 elements (large-v3's cache at 168 rows is 3.1e9); beams
decoded on CUDA with steps queued ahead score what a full forward pass gives, with the Triton
copy and with every beam row copied. Run with `make test-gpu`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpuscribe.workers.engines.batched import crossattn, rowcopy
from gpuscribe.workers.engines.batched.batcher import Batcher, EncoderInput
from gpuscribe.workers.engines.batched.decoder import StaticDecoder
from gpuscribe.workers.engines.batched.model import vocabulary_from_tokenizer
from gpuscribe.workers.engines.batched.search import DecodeOptions
from gpuscribe.workers.engines.transformers_engine import (
    TEST_ARCHITECTURE,
    _build_random,
    _random_info,
    _Target,
)

pytestmark = pytest.mark.gpu


def _caches(torch: Any, shape: tuple[int, ...], rows: list[int]) -> tuple[Any, ...]:
    """Two caches of `shape` (float16), random in `rows`, zero elsewhere."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    caches = []
    for _ in range(2):
        cache = torch.zeros(shape, dtype=torch.float16, device="cuda")
        for row in rows:
            cache[:, row].normal_(generator=generator)
        caches.append(cache)
    return tuple(caches)


SHAPES = {"small": (4, 12, 3, 40, 16), "past-2**31-elements": (32, 84, 20, 448, 64)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_the_triton_copy_is_the_looked_up_copy(shape: tuple[int, ...]) -> None:
    torch = pytest.importorskip("torch")
    if rowcopy._triton_kernel() is None:
        pytest.skip("Triton is not available")
    rows = shape[1]
    sources = torch.tensor([1, 1, 4, rows - 1, 6], device="cuda")
    targets = torch.tensor([0, 2, 3, rows - 2, 6], device="cuda")
    lengths = torch.tensor([7, 40, 1, shape[3], 5], device="cuda")
    moved = torch.tensor([True, True, False, True, False], device="cuda")
    used = sorted({*sources.tolist(), *targets.tolist()})
    ways = {}
    for method in ("triton", "looked-up"):
        caches = _caches(torch, shape, used)
        rowcopy.copy_moved(torch, caches, sources, targets, lengths, moved, shape[3], method)
        ways[method] = [c[:, used].cpu() for c in caches]
        del caches
        torch.cuda.empty_cache()
    # A moved row's positions past its length are never read (the looked-up copy takes every
    # moved row to the longest length): compare what is read.
    unread = torch.zeros(shape[0], len(used), *shape[2:], dtype=torch.bool)
    for target, length, m in zip(targets.tolist(), lengths.tolist(), moved.tolist(), strict=True):
        if m:
            unread[:, used.index(target), :, length:] = True
    for a, b in zip(ways["triton"], ways["looked-up"], strict=True):
        assert torch.equal(a.masked_fill(unread, 0), b.masked_fill(unread, 0))


def test_the_cross_attention_kernel_attends_as_each_row_alone() -> None:
    """large-v3's cross-attention shape in float16: windows of 5 rows, out of order, one of 20
    rows (two pieces), one of 1 row, and rows of no window."""
    torch = pytest.importorskip("torch")
    if not crossattn.triton_works("cuda:0"):
        pytest.skip("Triton is not available")
    generator = torch.Generator(device="cuda").manual_seed(0)
    rows, heads, frames, dim = 48, 20, 1500, 64
    options = {"device": "cuda", "dtype": torch.float16, "generator": generator}
    windows = [[7, 2, 30, 4, 5], [0], list(range(10, 30)), [1, 3, 6, 8, 9]]
    keys = torch.randn(rows, heads, frames, dim, **options)
    values = torch.randn(rows, heads, frames, dim, **options)
    for window in windows:
        keys[window] = keys[window[0]].clone()
        values[window] = values[window[0]].clone()
    q = torch.randn(rows, heads, dim, **options)
    table = crossattn.window_table(windows, rows)
    leaders, members = (torch.from_numpy(t).cuda() for t in table)
    out = torch.zeros_like(q)
    crossattn.attend(q, keys, values, leaders, members, out)
    expected = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], keys, values)
    used = sorted(r for w in windows for r in w)
    assert torch.allclose(out[used].float(), expected[used, :, 0].float(), atol=2e-3)
    assert not out[[r for r in range(rows) if r not in used]].any()


@pytest.fixture(scope="module")
def whisper() -> Any:
    torch = pytest.importorskip("torch")
    return _build_random(TEST_ARCHITECTURE, _Target(torch.device("cuda"), torch.float32)).eval()


@pytest.mark.parametrize(
    ("method", "grouped"),
    [("triton", None), ("every", None), ("triton", "kernel"), ("triton", "pooled")],
)
def test_beams_on_cuda_score_what_a_full_pass_gives(
    whisper: Any, method: str, grouped: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows of 4 beams beside greedy windows that end early (compaction moves the beams'
    rows while two steps are queued ahead): every hypothesis scores what a full forward pass
    over it gives, so each beam's cache row followed its prefix through every copy, with the
    Triton copy and with every beam row copied, and with each window's rows attending to its
    audio together through the kernel, in captured steps. (Random weights give near ties, so
    the test checks what rounding cannot change, not equality with another run.)"""
    torch = pytest.importorskip("torch")
    if method == "triton" and not rowcopy._triton_works("cuda:0"):
        pytest.skip("Triton is not available")
    if grouped and not crossattn.triton_works("cuda:0"):
        pytest.skip("Triton is not available")
    monkeypatch.setattr(rowcopy, "default_method", lambda device: method)
    arch = TEST_ARCHITECTURE
    info = _random_info(arch)
    v = vocabulary_from_tokenizer(info.tokenizer_file, arch.vocab_size, info)
    pooled = grouped == "pooled"  # one copy of a window's audio (`slots.py`), through the kernel
    decoder = StaticDecoder(whisper, 24 if pooled else 48, use_graphs=True, pooled=pooled)
    decoder.grouped = "kernel" if pooled else grouped
    batcher = Batcher(decoder, v, arch.n_mels)
    frames = 2 * arch.max_source_positions
    features = np.random.default_rng(1).normal(size=(14, arch.n_mels, frames)).astype(np.float32)
    prompt = [v.sot, v.no_timestamps]
    beams = DecodeOptions(
        beam_size=4, num_hypotheses=4, max_length=60, suppress_tokens=(), suppress_blank=False,
        length_penalty=0.0,
    )  # fmt: skip
    short = DecodeOptions(beam_size=1, max_length=60, forced_length=3, suppress_tokens=())
    try:
        filler = batcher.submit(EncoderInput(features=features[:6]), [prompt] * 6, short)
        encoded = EncoderInput(features=features[6:])
        results = batcher.submit(encoded, [prompt] * 8, beams).result()
        filler.result()
        for window, result in enumerate(results):
            hidden = encoded.hidden[window][None]
            for tokens, score in zip(result.sequences_ids, result.scores, strict=True):
                ids = torch.tensor([[*prompt, *tokens]], device="cuda")
                logits, _ = batcher.decoder.teacher_forced(hidden, ids, [])
                logprobs = logits[0].log_softmax(-1)
                start = len(prompt) - 1
                forced = sum(float(logprobs[start + k, t]) for k, t in enumerate(tokens))
                assert score == pytest.approx(forced, abs=2e-3)
        assert batcher.beam_rows_moved > 0
        assert (batcher.grouped_steps > 0) == bool(grouped)
    finally:
        batcher.close()
