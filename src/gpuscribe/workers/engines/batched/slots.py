"""A pooled cache: one copy of each window's audio, however many rows decode it.

In the per-row layout (`decoder.py`) every row holds its own copy of its window's
cross-attention keys and values: for large-v3 246 MB a row beside its 73 MB of self-attention
(448 positions against 1,500 encoder frames), so a window of 5 beams holds 5 copies of the same
1.2 GB. A pooled cache gives the same bytes two uses: self-attention rows grow from the pool's
bottom (rows `0..n-1`, kept compact by the batcher, as the captured steps need), and each
window's keys and values take one slot counted from the pool's top. The steps read a row's
audio through its window's slot (`crossattn.py`), so beams cost a self-attention row each and
their window one slot: a pool that holds 168 greedy windows holds 87 windows of 5 beams, where
the per-row layout holds 33.

Pure arithmetic and bookkeeping; the decoder allocates the pool (`PoolLayout`), the batcher
decides which window takes which slot (`SlotAllocator`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from gpuscribe.memory.batch import pooled_step_rows  # the ledger charges the same


@dataclass(frozen=True, slots=True)
class PoolLayout:
    """A pool of `pool_elements` elements per layer (for keys, and again for values):
    self-attention rows of `row_elements` from the bottom, cross-attention slots of
    `slot_elements` from the top. `rows` bounds the rows a step takes."""

    row_elements: int
    slot_elements: int
    pool_elements: int
    rows: int

    @classmethod
    def sized(cls, cache_rows: int, row_elements: int, slot_elements: int) -> PoolLayout:
        """The pool of the per-row layout's `cache_rows` rows (the same bytes: the memory the
        ledger charged), stepping up to the rows that windows of 5 rows fill
        (`memory.batch.pooled_step_rows`)."""
        pool = cache_rows * (row_elements + slot_elements)
        return cls(row_elements, slot_elements, pool,
                   pooled_step_rows(cache_rows, row_elements, slot_elements))  # fmt: skip

    @property
    def slots(self) -> int:
        return self.pool_elements // self.slot_elements

    def slots_start(self) -> int:
        """Where slot 0 begins: the slots are the top `slots x slot_elements` elements."""
        return self.pool_elements - self.slots * self.slot_elements

    def rows_below(self, lowest_slot: int | None) -> int:
        """How many rows fit under slot `lowest_slot` (None: no slot taken)."""
        if lowest_slot is None:
            return self.rows
        start = self.slots_start() + lowest_slot * self.slot_elements
        return min(self.rows, start // self.row_elements)


class SlotAllocator:
    """Which slots windows hold. A window takes the highest free slot, so the slots stay packed
    against the pool's top and the rows growing from its bottom meet them as late as possible.

    A step runs over its row bucket (`decoder.batch_buckets`), and writes the self-attention of
    the padding rows up to it too: the rows in use are kept to a bucket that lies wholly below
    the lowest slot."""

    def __init__(self, layout: PoolLayout, buckets: Sequence[int] = ()) -> None:
        self.layout = layout
        self._buckets = sorted(buckets) or list(range(1, layout.rows + 1))
        self._free = list(range(layout.slots))  # ascending
        self._taken: list[int] = []  # ascending

    @property
    def taken(self) -> int:
        return len(self._taken)

    def fits(self, rows: int, windows: Sequence[int]) -> bool:
        """Whether windows of `windows` rows each can start beside `rows` rows in use."""
        if len(windows) > len(self._free):
            return False
        lowest = self._lowest_after(len(windows))
        return rows + sum(windows) <= self._usable(lowest)

    def free_rows(self, rows: int) -> int:
        """Rows one more window could take beside `rows` rows in use."""
        if not self._free:
            return 0
        return max(0, self._usable(self._lowest_after(1)) - rows)

    def _usable(self, lowest: int | None) -> int:
        """The most rows in use whose bucket lies below slot `lowest`."""
        below = self.layout.rows_below(lowest)
        return max((b for b in self._buckets if b <= below), default=0)

    def take(self) -> int:
        if not self._free:
            raise RuntimeError("no cross-attention slot is free")
        slot = self._free.pop()
        bisect.insort(self._taken, slot)
        return slot

    def give(self, slot: int) -> None:
        self._taken.remove(slot)
        bisect.insort(self._free, slot)

    def clear(self) -> None:
        self._free = list(range(self.layout.slots))
        self._taken = []

    def fill(self, window_rows: int) -> int:
        """Start windows of `window_rows` rows each (taking their slots) while one more fits
        beside them: how many did. Calibration and benchmarks fill a batch this way."""
        windows = 0
        while self.fits(windows * window_rows, [window_rows]):
            self.take()
            windows += 1
        return windows

    def _lowest_after(self, count: int) -> int | None:
        """The lowest slot taken once `count` more are (the highest free ones)."""
        lowest = self._taken[0] if self._taken else None
        if count:
            new = self._free[-count]
            lowest = new if lowest is None else min(lowest, new)
        return lowest
