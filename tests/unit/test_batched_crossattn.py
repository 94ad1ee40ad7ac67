"""batched/crossattn.py: the table of where each window's rows are, and the cross-attention that
reads a window's keys and values once for all its rows (through the Triton kernel, in Triton's
interpreter where Triton is installed, and through PyTorch's kernels from each row's leader)
gives what each row attending to its own copy gives; a decoder's grouped step gives its row by
row step's logits."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from gpuscribe.workers.engines.batched import crossattn
from gpuscribe.workers.engines.batched.crossattn import GROUP, window_table
from gpuscribe.workers.engines.batched.decoder import StaticDecoder
from gpuscribe.workers.engines.transformers_engine import TEST_ARCHITECTURE

torch = pytest.importorskip("torch")


def test_the_table_has_a_piece_per_window_and_splits_long_windows() -> None:
    long = list(range(5, 5 + GROUP + 3))
    leaders, members = window_table([[3, 1], [0], long], 30)
    leader_of_row = crossattn.leader_of_row(
        torch, torch.from_numpy(leaders), torch.from_numpy(members), 30
    ).numpy()
    assert leaders.tolist()[:5] == [3, 0, 5, 5, -1]
    assert (leaders[4:] == -1).all()
    assert members[0].tolist() == [3, 1] + [-1] * (GROUP - 2)
    assert members[1].tolist() == [0] + [-1] * (GROUP - 1)
    assert members[2].tolist() == long[:GROUP]
    assert members[3].tolist() == long[GROUP:] + [-1] * (2 * GROUP - len(long))
    assert (members[4:] == -1).all()
    assert leader_of_row[[0, 1, 3, 5, 5 + GROUP + 2]].tolist() == [0, 3, 3, 5, 5]
    assert leader_of_row[[2, 4, 29]].tolist() == [2, 4, 29]  # in no window: their own
    assert leaders.dtype == members.dtype == np.int32


WINDOWS = [[4, 0, 7], [2], [1, 6, 3], [5], list(range(8, 8 + GROUP + 2))]  # out of order, split


def _cache(rows: int, windows: list[list[int]], seed: int) -> tuple[Any, Any, Any]:
    """Keys and values `[rows, heads, frames, head_dim]` where every row of a window holds the
    window's copy (as the batch fills them), and a query a row."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(rows, 3, 70, 16, generator=generator)
    values = torch.randn(rows, 3, 70, 16, generator=generator)
    for window in windows:
        keys[window] = keys[window[0]].clone()
        values[window] = values[window[0]].clone()
    return keys, values, torch.randn(rows, 3, 16, generator=generator)


def _row_by_row(q: Any, keys: Any, values: Any) -> Any:
    return torch.nn.functional.scaled_dot_product_attention(q[:, :, None], keys, values)[:, :, 0]


def test_attending_through_the_leaders_copy_is_attending_row_by_row() -> None:
    rows = 8 + GROUP + 2
    keys, values, q = _cache(rows, WINDOWS, 0)
    table = (torch.from_numpy(t) for t in window_table(WINDOWS, rows))
    gathered = crossattn.attend_gathered(torch, q, keys, values, *table)
    assert torch.allclose(gathered, _row_by_row(q, keys, values), atol=1e-5)


def _triton_interpreter() -> None:
    """Triton's kernels run on CPU tensors when TRITON_INTERPRET is set before the first kernel
    is made (skips where Triton is not installed, as in CI)."""
    pytest.importorskip("triton")
    os.environ["TRITON_INTERPRET"] = "1"
    if crossattn._kernel() is None:
        pytest.skip("Triton cannot be used here")


def test_the_kernel_attends_as_each_row_alone_would() -> None:
    _triton_interpreter()
    assert crossattn.triton_works("cpu")  # the trial a CUDA device gets at load
    rows = 8 + GROUP + 2 + 2  # the last two rows are in no window: left as they were
    keys, values, q = _cache(rows, WINDOWS, 1)
    leaders, members = (torch.from_numpy(t) for t in window_table(WINDOWS, rows))
    out = torch.full_like(q, 7.0)
    crossattn.attend(q, keys, values, leaders, members, out)
    expected = _row_by_row(q, keys, values)
    assert torch.allclose(out[:-2], expected[:-2], atol=1e-5)
    assert (out[-2:] == 7.0).all()
    out = torch.full_like(q, 7.0)  # a bucket's first rows only: the pieces in them
    crossattn.attend(q, keys, values, leaders[:3], members[:3], out)
    assert torch.allclose(out[[0, 1, 2, 3, 4, 6, 7]], expected[[0, 1, 2, 3, 4, 6, 7]], atol=1e-5)
    assert (out[5] == 7.0).all() and (out[8:] == 7.0).all()


@pytest.mark.parametrize("grouped", ["gathered", "kernel"])
def test_a_grouped_step_gives_the_row_by_row_logits(whisper: Any, grouped: str) -> None:
    if grouped == "kernel":
        _triton_interpreter()
    decoder = StaticDecoder(whisper, 8, use_graphs=False)
    windows = [[5, 0, 3], [1], [2, 4]]  # rows 0..5 in use, out of order; rows 6, 7 padding
    frames = TEST_ARCHITECTURE.max_source_positions
    hidden = torch.randn(3, frames, TEST_ARCHITECTURE.d_model, generator=torch.Generator())
    owner = [0, 1, 2, 0, 2, 0]
    decoder.fill_cross(torch.arange(6), hidden, torch.tensor(owner))
    decoder.tokens[:6] = torch.tensor([50257, 11, 12, 13, 14, 15])
    decoder.positions[:6] = torch.tensor([0, 3, 1, 4, 1, 2])
    table = (torch.from_numpy(t) for t in window_table(windows, 8))
    decoder.set_windows(*table)
    row_by_row = decoder.step(6, 4).clone()
    decoder.grouped = grouped
    assert torch.allclose(decoder.step(6, 4, grouped=True), row_by_row, atol=2e-4)
    decoder.grouped = None  # a step asked to be grouped where it cannot be: row by row
    assert torch.equal(decoder.step(6, 4, grouped=True), row_by_row)


@pytest.mark.parametrize("grouped", ["gathered", "kernel"])
def test_a_pooled_step_gives_the_per_row_logits(whisper: Any, grouped: str) -> None:
    """The same windows and rows, each window's audio once in a slot of a pooled cache: every
    row's logits are what the per-row layout gives (rows 0..5 over three windows in slots
    that are not their order, beside the rows' prompts prefilled through the slots)."""
    if grouped == "kernel":
        _triton_interpreter()
    per_row = StaticDecoder(whisper, 8, use_graphs=False)
    pooled = StaticDecoder(whisper, 6, use_graphs=False, pooled=True)
    pooled.grouped = grouped
    assert pooled.cache_rows == 6 and pooled.rows > 6
    windows, slots = [[5, 0, 3], [1], [2, 4]], [6, 2, 4]  # above the step's 8 rows (`slots.py`)
    assert pooled.layout is not None and pooled.layout.rows_below(min(slots)) >= 8
    frames = TEST_ARCHITECTURE.max_source_positions
    hidden = torch.randn(3, frames, TEST_ARCHITECTURE.d_model, generator=torch.Generator())
    owner = [0, 1, 2, 0, 2, 0]
    per_row.fill_cross(torch.arange(6), hidden, torch.tensor(owner))
    pooled.fill_cross(torch.tensor(slots), hidden)
    prompt = torch.tensor([[50257, 7, 8]] * 6)
    rows = torch.arange(6)
    first = per_row.prefill(rows, prompt)
    assert torch.allclose(
        pooled.prefill(rows, prompt, slots=torch.tensor([slots[w] for w in owner])), first,
        atol=2e-4,
    )  # fmt: skip
    for decoder in (per_row, pooled):
        decoder.tokens[:6] = torch.tensor([9, 11, 12, 13, 14, 15])
        decoder.positions[:6] = torch.tensor([3, 3, 3, 3, 3, 3])
    per_row_table = window_table(windows, 8)
    per_row.set_windows(*(torch.from_numpy(t) for t in per_row_table))
    pooled.set_windows(*(torch.from_numpy(t) for t in window_table(windows, pooled.rows, slots)))
    expected = per_row.step(6, 3).clone()
    assert torch.allclose(pooled.step(6, 3), expected, atol=2e-4)  # pooled: always grouped
