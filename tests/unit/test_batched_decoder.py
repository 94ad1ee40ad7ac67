"""batched/decoder.py on a tiny random Whisper (d_model 64, 2 layers, 4 heads), on the CPU: the
static-cache step gives the logits of a full causal forward (its own `teacher_forced` and
Hugging Face's), at every position, for rows at different positions, whatever the other rows
hold; copying rows moves whole sequences; moving beam rows copies what moved, each way."""

from __future__ import annotations

import os
from typing import Any

import pytest

from gpuscribe.workers.engines.batched import rowcopy, selfattn
from gpuscribe.workers.engines.batched.crossattn import window_table
from gpuscribe.workers.engines.batched.decoder import (
    LENGTH_BUCKETS,
    StaticDecoder,
    batch_buckets,
    bucket_for,
)
from gpuscribe.workers.engines.batched.rowcopy import METHODS, copy_moved
from gpuscribe.workers.engines.transformers_engine import (
    TEST_ARCHITECTURE,
)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROWS = 6
TOLERANCE = 2e-4  # float32, logits of magnitude about 1
SOT, NO_TIMESTAMPS = 50257, 50362


@pytest.fixture
def decoder(whisper: Any) -> StaticDecoder:
    return StaticDecoder(whisper, ROWS, use_graphs=True)  # graphs: CUDA only, eager here


def _hidden(n: int, seed: int, frames: int = TEST_ARCHITECTURE.max_source_positions) -> Any:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, frames, TEST_ARCHITECTURE.d_model, generator=generator)


def _tokens(n: int, length: int, seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50000, (n, length), generator=generator)
    tokens[:, 0] = SOT
    return tokens


def _hf_logits(whisper: Any, hidden: Any, tokens: Any) -> Any:
    with torch.inference_mode():
        out = whisper.model.decoder(input_ids=tokens, encoder_hidden_states=hidden)
        return whisper.proj_out(out.last_hidden_state).float()


def _step(decoder: StaticDecoder, tokens: list[int], positions: list[int]) -> Any:
    n = len(tokens)
    decoder.tokens[:n] = torch.tensor(tokens)
    decoder.positions[:n] = torch.tensor(positions)
    return decoder.step(n, max(positions)).clone()


def test_buckets() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert batch_buckets(256) == (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256)
    assert batch_buckets(168) == (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 168)
    assert bucket_for(5, batch_buckets(48)) == 8
    assert bucket_for(33, batch_buckets(48)) == 48
    assert bucket_for(200, LENGTH_BUCKETS) == 256
    with pytest.raises(ValueError, match="above the largest bucket"):
        bucket_for(49, batch_buckets(48))


def test_cache_is_what_row_bytes_says(decoder: StaticDecoder) -> None:
    caches = (decoder.self_k, decoder.self_v, decoder.cross_k, decoder.cross_v)
    total = sum(c.numel() * c.element_size() for c in caches)
    assert total == ROWS * decoder.shape.row_bytes(4)
    assert not decoder.use_graphs  # no CUDA here


def test_teacher_forced_equals_hugging_face(whisper: Any, decoder: StaticDecoder) -> None:
    hidden, tokens = _hidden(2, 0), _tokens(2, 9, 1)
    logits, scores = decoder.teacher_forced(hidden, tokens, [(0, 1), (1, 3)])
    expected = _hf_logits(whisper, hidden, tokens)
    assert logits.shape == expected.shape == (2, 9, decoder.shape.vocab)
    assert torch.allclose(logits, expected, atol=TOLERANCE)
    assert scores.shape == (2, 2, 9, hidden.shape[1])
    assert decoder.teacher_forced(hidden, tokens, [])[1] is None


def test_cross_attention_scores_are_the_heads_scaled_products(decoder: StaticDecoder) -> None:
    """Softmax over frames of the returned scores is the head's attention: checked by
    rebuilding layer 0's cross-attention queries and keys by hand."""
    whisper_layer = decoder._layers[0]
    hidden, tokens = _hidden(1, 2), _tokens(1, 4, 3)
    _, scores = decoder.teacher_forced(hidden, tokens, [(0, 2)])
    with torch.inference_mode():
        F = torch.nn.functional
        x = F.embedding(tokens, decoder._embed) + decoder._positions[:4]
        h = whisper_layer.ln1(x)
        qkv = F.linear(h, whisper_layer.qkv_w, whisper_layer.qkv_b)
        q, k, v = (t.view(1, 4, 4, 16).transpose(1, 2) for t in qkv.split(64, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + F.linear(
            a.transpose(1, 2).reshape(1, 4, 64), whisper_layer.out_w, whisper_layer.out_b
        )
        query = F.linear(whisper_layer.ln2(x), whisper_layer.xq_w, whisper_layer.xq_b)
        keys = F.linear(hidden, whisper_layer.xk_w)
        expected = query[..., 32:48] @ keys[..., 32:48].transpose(-1, -2) / 4.0
    assert torch.allclose(scores[:, 0], expected, atol=1e-4)


def test_prefill_then_steps_equal_teacher_forcing(decoder: StaticDecoder) -> None:
    """Two rows with prompts of different lengths, then steps with each row at its own
    position: every step's logits are the teacher-forced logits at that position."""
    hidden, tokens = _hidden(2, 4), _tokens(2, 12, 5)
    expected, _ = decoder.teacher_forced(hidden, tokens, [])
    rows = torch.tensor([0, 1])
    decoder.fill_cross(rows, hidden)
    prompts = (3, 5)
    for row, length in enumerate(prompts):
        logits = decoder.prefill(rows[row : row + 1], tokens[row : row + 1, :length])
        assert torch.allclose(logits[0], expected[row, :length], atol=TOLERANCE)
    positions = list(prompts)
    while max(positions) < tokens.shape[1]:
        fed = [int(tokens[r, min(p, 11)]) for r, p in enumerate(positions)]
        logits = _step(decoder, fed, [min(p, 11) for p in positions])
        for row, position in enumerate(positions):
            if position < tokens.shape[1]:
                assert torch.allclose(logits[row], expected[row, position], atol=TOLERANCE), (
                    row,
                    position,
                )
        positions = [p + 1 for p in positions]


@pytest.mark.parametrize("pooled", [False, True], ids=["per-row", "pooled"])
@pytest.mark.parametrize("kind", ["bmm", "kq", "ragged"])
def test_every_attention_form_steps_rows_at_their_own_positions(
    whisper: Any, kind: str, pooled: bool
) -> None:
    """Three rows whose prompts end at 3, 60 and 62, stepped together past the first 64
    positions: each attention form gives the teacher-forced logits at each row's own position
    (the "ragged" form, in Triton's interpreter, reads each row's positions only, across its
    blocks of 64; pooled, the rows lie under slots and hear their windows through them)."""
    if kind == "ragged":
        _triton_interpreter()
        assert selfattn.triton_works("cpu")
    decoder = StaticDecoder(whisper, 4, use_graphs=False, pooled=pooled)
    decoder.set_attention(kind)
    hidden, tokens = _hidden(3, 30), _tokens(3, 68, 31)
    expected, _ = decoder.teacher_forced(hidden, tokens, [])
    rows = torch.arange(3)
    if decoder.layout is None:
        decoder.fill_cross(rows, hidden)
        heard = rows
    else:
        decoder.grouped = "gathered"
        top = decoder.layout.slots - 1
        heard = torch.tensor([top, top - 2, top - 1])
        decoder.fill_cross(heard, hidden)
        table = window_table([[0], [1], [2]], decoder.rows, heard.tolist())
        decoder.set_windows(*(torch.from_numpy(t) for t in table))
    prompts = (3, 60, 62)
    for row, length in enumerate(prompts):
        slot = None if decoder.layout is None else heard[row : row + 1]
        decoder.prefill(rows[row : row + 1], tokens[row : row + 1, :length], slots=slot)
    for step in range(6):
        positions = [p + step for p in prompts]
        logits = _step(decoder, [int(tokens[r, p]) for r, p in enumerate(positions)], positions)
        for row, position in enumerate(positions):
            assert torch.allclose(logits[row], expected[row, position], atol=TOLERANCE), (
                row, position,
            )  # fmt: skip


def test_prefill_at_positions_gives_only_those_logits(decoder: StaticDecoder) -> None:
    hidden, tokens = _hidden(2, 20), _tokens(2, 7, 21)
    expected, _ = decoder.teacher_forced(hidden, tokens, [])
    rows = torch.tensor([2, 3])
    decoder.fill_cross(rows, hidden)
    at = torch.tensor([[0, 6], [2, 6]])
    logits = decoder.prefill(rows, tokens, at=at)
    assert logits.shape == (2, 2, decoder.shape.vocab)
    for row in range(2):
        assert torch.allclose(logits[row], expected[row, at[row]], atol=TOLERANCE)
    stepped = _step_rows(decoder, rows, [int(t) for t in tokens[:, 6]], 6)
    assert torch.allclose(stepped, expected[:, 6], atol=TOLERANCE)  # the cache was written


def _step_rows(decoder: StaticDecoder, rows: Any, tokens: list[int], position: int) -> Any:
    """Rows `rows` copied to the front, then one step of them at `position`."""
    front = torch.arange(len(tokens))
    decoder.copy_rows(rows, front)
    return _step(decoder, tokens, [position] * len(tokens))


def test_steps_alone_from_the_first_token_equal_teacher_forcing(decoder: StaticDecoder) -> None:
    hidden, tokens = _hidden(1, 6), _tokens(1, 70, 7)  # crosses the 64-position bucket
    expected, _ = decoder.teacher_forced(hidden, tokens, [])
    decoder.fill_cross(torch.tensor([0]), hidden)
    for position in range(tokens.shape[1]):
        logits = _step(decoder, [int(tokens[0, position])], [position])
        assert torch.allclose(logits[0], expected[0, position], atol=TOLERANCE), position


def _run_rows(decoder: StaticDecoder, hidden: Any, tokens: Any, count: int) -> Any:
    """Rows 0..count-1 fed `tokens` from position 0; the last step's logits."""
    decoder.fill_cross(torch.arange(count), hidden[:count])
    logits = None
    for position in range(tokens.shape[1]):
        logits = _step(decoder, tokens[:count, position].tolist(), [position] * count)
    return logits


def test_a_row_does_not_depend_on_the_other_rows(decoder: StaticDecoder) -> None:
    hidden, tokens = _hidden(5, 8), _tokens(5, 6, 9)
    mixed = _run_rows(decoder, hidden, tokens, 5)
    other_hidden, other_tokens = hidden.clone(), tokens.clone()
    other_hidden[1:] = _hidden(4, 10)
    other_tokens[1:, 1:] = _tokens(4, 5, 11)
    changed = _run_rows(decoder, other_hidden, other_tokens, 5)
    alone = _run_rows(decoder, hidden, tokens, 1)
    assert not torch.allclose(mixed[1:], changed[1:], atol=1e-3)  # the others did change
    assert torch.allclose(mixed[0], changed[0], atol=1e-5)
    assert torch.allclose(mixed[0], alone[0], atol=1e-5)
    expected, _ = decoder.teacher_forced(hidden[:1], tokens[:1], [])
    assert torch.allclose(alone[0], expected[0, -1], atol=TOLERANCE)


def test_bmm_attention_equals_sdpa(decoder: StaticDecoder) -> None:
    hidden, tokens = _hidden(3, 12), _tokens(3, 5, 13)
    sdpa = _run_rows(decoder, hidden, tokens, 3)
    decoder.set_attention("bmm")
    try:
        bmm = _run_rows(decoder, hidden, tokens, 3)
    finally:
        decoder.set_attention("sdpa")
    assert torch.allclose(sdpa, bmm, atol=TOLERANCE)
    with pytest.raises(ValueError, match="unknown attention"):
        decoder.set_attention("flash")
    with pytest.raises(ValueError, match="unknown attention"):
        decoder.set_attention("auto", ("sdpa", "flash"))
    decoder.set_attention("auto", ("sdpa", "kq"))
    assert decoder._timed_kinds() == ("sdpa", "kq")
    decoder.set_attention("sdpa")


def test_copy_rows_moves_a_sequence(decoder: StaticDecoder) -> None:
    hidden, tokens = _hidden(1, 14), _tokens(1, 8, 15)
    expected, _ = decoder.teacher_forced(hidden, tokens, [])
    decoder.fill_cross(torch.tensor([4]), hidden)
    decoder.prefill(torch.tensor([4]), tokens[:, :6])
    decoder.fill_cross(torch.tensor([0]), _hidden(1, 16))  # something else in row 0
    decoder.copy_rows(torch.tensor([4]), torch.tensor([0]))
    logits = _step(decoder, [int(tokens[0, 6])], [6])
    assert torch.allclose(logits[0], expected[0, 6], atol=TOLERANCE)


def test_moved_beams_keep_the_target_cross_attention(decoder: StaticDecoder) -> None:
    """Beams of one window: the prefix moves, the (shared) audio stays."""
    hidden, tokens = _hidden(1, 17), _tokens(1, 8, 18)
    decoder.fill_cross(torch.tensor([0, 1]), hidden.expand(2, -1, -1))
    decoder.prefill(torch.tensor([1]), tokens[:, :5])
    decoder.prefill(torch.tensor([0]), _tokens(1, 5, 19))  # another prefix in row 0
    moved = torch.tensor([True, False])
    decoder.move_beams(torch.tensor([1, 1]), torch.tensor([0, 1]), torch.tensor([5, 5]), moved, 5)
    expected, _ = decoder.teacher_forced(hidden, tokens, [])
    logits = _step(decoder, [int(tokens[0, 5])] * 2, [5, 5])
    assert torch.allclose(logits[0], expected[0, 5], atol=TOLERANCE)
    assert torch.allclose(logits[1], expected[0, 5], atol=TOLERANCE)


def test_a_permutation_of_rows_reads_every_row_before_writing(decoder: StaticDecoder) -> None:
    """Rows that swap while compacting: each target gets its source's old content."""
    caches = (decoder.self_k, decoder.self_v, decoder.cross_k, decoder.cross_v)
    for cache in caches:
        cache[:, :3].copy_(torch.randn_like(cache[:, :3]))
    before = [cache.clone() for cache in caches]
    decoder.copy_rows(torch.tensor([1, 2, 0]), torch.tensor([0, 1, 2]))
    for cache, old in zip(caches, before, strict=True):
        assert torch.equal(cache[:, [0, 1, 2]], old[:, [1, 2, 0]])


@pytest.mark.parametrize("pooled", [False, True], ids=["per-row", "pooled"])
@pytest.mark.parametrize("method", METHODS)
def test_every_way_of_moving_beams_copies_the_moved_rows_up_to_their_lengths(
    method: str, pooled: bool
) -> None:
    """Rows that moved take their parent's first `length` positions, and nothing else changes:
    not the rows that stayed, not another layer's or head's (a moved row's later positions are
    never read: a step writes a position before attending to it), not what lies beyond the
    rows in a pooled cache, whose layers are further apart than the rows. The Triton kernel
    runs in Triton's interpreter on the CPU (where Triton is installed)."""
    if method == "triton":
        _triton_interpreter()
    generator = torch.Generator().manual_seed(3)
    if pooled:  # each layer's rows, then 100 elements of the layer's slots
        pools = [torch.randn(3, 9 * 2 * 16 * 4 + 100, generator=generator) for _ in range(2)]
        caches = tuple(p[:, : 9 * 2 * 16 * 4].view(3, 9, 2, 16, 4) for p in pools)
        slots_before = [p[:, -100:].clone() for p in pools]
    else:
        caches = tuple(torch.randn(3, 9, 2, 16, 4, generator=generator) for _ in range(2))
    before = [c.clone() for c in caches]
    sources = torch.tensor([2, 2, 4, 5, 7, 7])
    targets = torch.tensor([1, 2, 3, 5, 6, 8])
    lengths = torch.tensor([5, 5, 16, 9, 1, 3])
    moved = torch.tensor([True, False, True, False, True, True])
    copy_moved(torch, caches, sources, targets, lengths, moved, 16, method)
    for cache, old in zip(caches, before, strict=True):
        expected, unread = old.clone(), torch.zeros_like(old, dtype=torch.bool)
        for s, t, n, m in zip(sources, targets, lengths, moved, strict=True):
            if m:
                expected[:, t, :, :n] = old[:, s, :, :n]
                unread[:, t, :, n:] = True
        assert torch.equal(cache.masked_fill(unread, 0), expected.masked_fill(unread, 0))
    if pooled:
        assert all(torch.equal(p[:, -100:], b) for p, b in zip(pools, slots_before, strict=True))


def test_a_triton_launch_that_raises_falls_back_to_copying_every_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel is compiled for each new specialization of its arguments; one that fails to
    compile mid-stream must not fail the batch: that copy, and the device's later ones, copy
    every beam row instead."""

    def launch(*_: Any) -> None:
        raise RuntimeError("compilation failed (simulated)")

    monkeypatch.setattr(rowcopy, "_triton_kernel", lambda: launch)
    monkeypatch.setattr(rowcopy, "_TRITON_FAILED", set())
    cache = torch.randn(2, 4, 1, 8, 2)
    before = cache.clone()
    one, two = torch.tensor([1]), torch.tensor([2])
    copy_moved(torch, (cache,), one, two, torch.tensor([5]), torch.tensor([True]), 5, "triton")
    assert torch.equal(cache[:, 2, :, :5], before[:, 1, :, :5])
    assert "cpu" in rowcopy._TRITON_FAILED


def _triton_interpreter() -> None:
    """Triton's kernels run on CPU tensors when TRITON_INTERPRET is set before the first
    kernel is made (skips where Triton is not installed, as in CI)."""
    pytest.importorskip("triton")
    os.environ["TRITON_INTERPRET"] = "1"
    if rowcopy._triton_kernel() is None:
        pytest.skip("Triton cannot be used here")
    assert rowcopy._triton_works("cpu")  # the trial a CUDA device gets at load


def test_encode_gives_the_encoder_output(whisper: Any, decoder: StaticDecoder) -> None:
    features = torch.randn(1, TEST_ARCHITECTURE.n_mels, 2 * TEST_ARCHITECTURE.max_source_positions)
    hidden = decoder.encode(features)
    with torch.inference_mode():
        expected = whisper.model.encoder(features).last_hidden_state
    assert hidden.shape == (1, TEST_ARCHITECTURE.max_source_positions, TEST_ARCHITECTURE.d_model)
    assert torch.allclose(hidden, expected)


def test_rows_sharing_a_window_get_its_keys_and_values(decoder: StaticDecoder) -> None:
    hidden = _hidden(2, 21)
    decoder.fill_cross(torch.tensor([0, 1, 2, 3]), hidden, torch.tensor([0, 0, 1, 0]))
    shared = (decoder.cross_k.clone(), decoder.cross_v.clone())
    decoder.fill_cross(torch.tensor([0, 1, 2, 3]), hidden[[0, 0, 1, 0]])
    assert torch.allclose(shared[0], decoder.cross_k, atol=1e-6)
    assert torch.allclose(shared[1], decoder.cross_v, atol=1e-6)
