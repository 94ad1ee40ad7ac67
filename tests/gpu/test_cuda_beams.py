"""On a real CUDA GPU: beams chosen on the device. The Triton row copy copies what the plain
PyTorch copies do, also past 2**31 elements (large-v3's cache at 168 rows is 3.1e9); a batch of
beam windows on CUDA gives the same hypotheses with steps queued ahead as without, and with
the Triton copy as with every beam row copied. Run with `make test-gpu`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gpuscribe.workers.engines.batched import rowcopy
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
    for a, b in zip(ways["triton"], ways["looked-up"], strict=True):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def make() -> Callable[[int, int], Batcher]:
    torch = pytest.importorskip("torch")
    arch = TEST_ARCHITECTURE
    whisper = _build_random(arch, _Target(torch.device("cuda"), torch.float16)).eval()
    info = _random_info(arch)
    vocabulary = vocabulary_from_tokenizer(info.tokenizer_file, arch.vocab_size, info)

    def batcher(rows: int, lookahead: int) -> Batcher:
        made = Batcher(StaticDecoder(whisper, rows, use_graphs=True), vocabulary, arch.n_mels)
        made.lookahead = lookahead
        return made

    return batcher


def _run(batcher: Batcher) -> list[Any]:
    v = batcher.vocabulary
    frames = 2 * TEST_ARCHITECTURE.max_source_positions
    rng = np.random.default_rng(1)
    features = rng.normal(size=(12, TEST_ARCHITECTURE.n_mels, frames)).astype(np.float32)
    options = DecodeOptions(beam_size=5, max_length=80, suppress_tokens=())
    greedy = DecodeOptions(beam_size=1, max_length=80, suppress_tokens=())
    plain = [v.sot, v.no_timestamps]
    pending = [
        batcher.submit(EncoderInput(features=features[:8]), [[v.sot]] * 8, options),
        batcher.submit(EncoderInput(features=features[8:]), [plain] * 4, greedy),
    ]
    results = [r for p in pending for r in p.result()]
    batcher.close()
    return [(r.sequences_ids, [round(s, 3) for s in r.scores]) for r in results]


def test_beams_on_cuda_do_not_depend_on_the_steps_queued_ahead_or_the_copy(
    make: Callable[[int, int], Batcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _run(make(48, 0))
    assert _run(make(48, 2)) == reference
    monkeypatch.setattr(rowcopy, "default_method", lambda device: "every")
    assert _run(make(48, 2)) == reference
