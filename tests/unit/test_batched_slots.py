"""batched/slots.py: a pooled cache's arithmetic and its slots' bookkeeping."""

from __future__ import annotations

import pytest

from gpuscribe.memory.architectures import ARCHITECTURES
from gpuscribe.memory.batch import POOLED_WINDOW_ROWS
from gpuscribe.workers.engines.batched.decoder import batch_buckets
from gpuscribe.workers.engines.batched.slots import PoolLayout, SlotAllocator


def _large_v3(cache_rows: int) -> PoolLayout:
    arch = ARCHITECTURES["large-v3"]
    d = arch.d_model
    return PoolLayout.sized(
        cache_rows, arch.max_target_positions * d, arch.max_source_positions * d
    )


def test_a_pool_has_the_per_row_layouts_bytes_and_steps_windows_of_five_rows() -> None:
    layout = _large_v3(168)
    per_row = 168 * (448 + 1500) * 1280
    assert layout.pool_elements == per_row
    assert layout.slots == per_row // (1500 * 1280)  # 218
    windows = per_row // ((POOLED_WINDOW_ROWS * 448 + 1500) * 1280)
    assert windows == 87 and layout.rows == POOLED_WINDOW_ROWS * windows == 435  # per row: 33


def _fill(window_rows: int) -> tuple[int, PoolLayout, SlotAllocator]:
    """Windows of `window_rows` rows started into large-v3's pool of 168 rows' bytes, with the
    pooled decoder's real buckets (its cache's rows among them), until one does not fit: the
    windows that fit."""
    layout = _large_v3(168)
    slots = SlotAllocator(layout, batch_buckets(layout.rows, (168,)))
    return slots.fill(window_rows), layout, slots


def test_greedy_windows_fill_the_pool_as_the_per_row_layout_does() -> None:
    """Without the cache's rows among the buckets, 161-168 rows would step at 192, which does
    not fit under 161 slots (160 windows)."""
    windows, _, _ = _fill(1)
    assert windows == 168


def test_windows_of_five_beams_fill_it_two_and_a_half_times_over() -> None:
    windows, layout, slots = _fill(5)
    assert windows == 87 and 5 * windows <= layout.rows_below(slots._taken[0])


def test_a_window_takes_the_highest_free_slot_and_rows_stop_below_the_lowest() -> None:
    layout = PoolLayout(row_elements=10, slot_elements=30, pool_elements=100, rows=8)
    assert layout.slots == 3 and layout.slots_start() == 10
    slots = SlotAllocator(layout)
    assert slots.free_rows(0) == 7  # slot 2 begins at element 70: 7 rows below it
    assert [slots.take(), slots.take()] == [2, 1]  # from the top
    assert layout.rows_below(1) == 4 and slots.fits(4, []) and not slots.fits(5, [])
    assert slots.fits(0, [1]) and not slots.fits(2, [1])  # slot 0 leaves one row (10 of 100)
    slots.give(2)
    assert slots.take() == 2  # a freed slot near the top is taken again first
    assert not slots.fits(0, [1, 1])  # one slot left
    slots.clear()
    assert slots.taken == 0 and slots.free_rows(0) == 7


def test_rows_bound_the_step_even_under_an_empty_pool() -> None:
    layout = PoolLayout(row_elements=10, slot_elements=30, pool_elements=1000, rows=8)
    assert layout.rows_below(None) == 8 and layout.rows_below(layout.slots - 1) == 8


def test_taking_from_a_full_pool_is_an_error() -> None:
    slots = SlotAllocator(PoolLayout(10, 30, 60, 2))
    slots.take(), slots.take()
    assert not slots.fits(0, [1])
    with pytest.raises(RuntimeError):
        slots.take()


def test_the_rows_in_use_keep_their_whole_bucket_below_the_slots() -> None:
    """A step writes its padding rows up to the bucket: with buckets of 4 and 8, the 7 rows
    below slot 2 hold a bucket of 4 only."""
    layout = PoolLayout(row_elements=10, slot_elements=30, pool_elements=100, rows=8)
    slots = SlotAllocator(layout, buckets=(1, 2, 4, 8))
    assert slots.free_rows(0) == 4
    assert slots.fits(0, [4]) and not slots.fits(0, [5])
