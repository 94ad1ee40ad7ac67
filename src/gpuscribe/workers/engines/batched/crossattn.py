"""The decode step's cross-attention read once for every row of a window (its beams, its
best-of samples) instead of once a row.

Each row of the cache holds its own copy of its window's cross-attention keys and values
(`decoder.py`), and PyTorch's fused kernel attends row by row, so a step reads a window of 5
beams' keys and values five times: for large-v3, 246 MB a row, most of what a step reads. Here a
Triton program takes one piece of a window (up to `GROUP` of its rows) and one head, reads the
keys and values of the window's leader row (any of its rows: they hold the same) once, and
attends with every row of the piece. A window of more than `GROUP` rows is split into pieces
with the same leader. In a pooled cache (`slots.py`) a window's keys and values are one copy,
in its slot, and the slot is the leader: greedy windows of one row read theirs this way too.

The batcher writes where each window's rows are (`window_table`) whenever rows start or move;
the decoder runs steps with windows of several rows this way where the kernel passed its trial
at load (`triton_works`), and row by row elsewhere (no Triton, the CPU): the same result from
more bytes. `attend_gathered` gives the same result with PyTorch's kernels from each row's leader
copy: tests run the tables through it on machines without Triton.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GROUP = 16  # rows of a window one program attends with (the kernel's matrix products need 16)
BLOCK_FRAMES = 64  # encoder frames a program reads at a time


def window_table(
    windows: Sequence[Sequence[int]], size: int, slots: Sequence[int] | None = None
) -> tuple[np.ndarray[Any, Any], ...]:
    """Where the rows of each window are, for `size` rows: `leaders` (`[size]` int32, a piece's
    leader row, or its window's slot in a pooled cache where `slots` gives them, -1 past the
    last piece) and `members` (`[size, GROUP]` int32, the piece's rows, -1 for none). Windows
    are lists of row indices; a piece has at least one row, so `size` rows hold every piece."""
    leaders = np.full(size, -1, dtype=np.int32)
    members = np.full((size, GROUP), -1, dtype=np.int32)
    piece = 0
    for number, rows in enumerate(windows):
        leader = rows[0] if slots is None else slots[number]
        for first in range(0, len(rows), GROUP):
            chunk = rows[first : first + GROUP]
            leaders[piece] = leader
            members[piece, : len(chunk)] = chunk
            piece += 1
    return leaders, members


def leader_of_row(torch: Any, leaders: Any, members: Any, rows: int) -> Any:
    """Each of the first `rows` rows' leader from a window table (`[rows]` int64); a row in no
    window is its own."""
    owner = torch.arange(rows, device=members.device)
    lead = leaders.long()[:, None].expand_as(members)
    inside = (members >= 0) & (members < rows)
    return owner.index_put((members[inside].long(),), lead[inside])


def attend_gathered(torch: Any, q: Any, keys: Any, values: Any, leaders: Any, members: Any) -> Any:
    """Rows `q` (`[n, heads, head_dim]`) attending to their leaders' keys and values (`[rows,
    heads, frames, head_dim]`) through PyTorch, the leaders looked up in the window table:
    `[n, heads, head_dim]`. Not capturable in a CUDA graph (the look-up's shapes follow the
    table); tests and the CPU use it."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    owners = leader_of_row(torch, leaders, members, q.shape[0]).clamp(max=keys.shape[0] - 1)
    k, v = keys.index_select(0, owners), values.index_select(0, owners)
    return sdpa(q[:, :, None], k, v)[:, :, 0]


def attend(q: Any, keys: Any, values: Any, leaders: Any, members: Any, out: Any) -> None:
    """Rows `q` (`[n, heads, head_dim]`, contiguous) attending to their window's keys and
    values (`[rows, heads, frames, head_dim]`, read at each piece's leader) into `out` (like
    `q`); the first `members.shape[0]` pieces of the table are read. Rows in no piece are left
    as they are."""
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("Triton is not available")
    kernel(q, keys, values, leaders, members, out)


@functools.cache
def triton_works(device: str) -> bool:
    """Whether the kernel compiles and attends as PyTorch does on `device`, tried once at the
    model's load: Triton builds its launcher with the system's C compiler the first time, and
    a machine may lack one."""
    if _kernel() is None:
        return False
    import torch

    try:
        generator = torch.Generator().manual_seed(0)
        dtype = torch.float16 if "cuda" in device else torch.float32
        keys, values, q = (
            torch.randn(shape, generator=generator).to(device, dtype)
            for shape in ((4, 2, 70, 16), (4, 2, 70, 16), (4, 2, 16))
        )
        leaders, members = (
            torch.from_numpy(t).to(device) for t in window_table([[1, 0], [2], [3]], 4)
        )
        out = torch.zeros_like(q)
        attend(q, keys, values, leaders, members, out)
        expected = attend_gathered(torch, q, keys, values, leaders, members)
        works = bool(torch.allclose(out.float(), expected.float(), atol=2e-2))
    except Exception:
        log.warning("the Triton cross-attention failed: windows of several rows attend row by "
                    "row", exc_info=True)  # fmt: skip
        return False
    if not works:
        log.warning("the Triton cross-attention attended wrong: windows attend row by row")
    return works


@functools.cache
def _kernel() -> Callable[..., None] | None:
    """The Triton launcher, or None where Triton cannot be imported."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # not installed, or built for another driver
        log.info("Triton is not available: windows of several rows attend row by row")
        return None

    @triton.jit  # type: ignore[untyped-decorator]
    def grouped(  # type: ignore[no-untyped-def]
        q, k, v, out, leaders, members, frames, heads, scale,
        head_dim: tl.constexpr, group: tl.constexpr, block: tl.constexpr,
    ):  # fmt: skip
        piece = tl.program_id(0)
        head = tl.program_id(1)
        leader = tl.load(leaders + piece)
        if leader < 0:
            return
        rows = tl.load(members + piece * group + tl.arange(0, group))
        valid = rows >= 0
        d = tl.arange(0, head_dim)
        at = (tl.where(valid, rows, 0).to(tl.int64) * heads + head) * head_dim
        query = tl.load(q + at[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        base = (leader.to(tl.int64) * heads + head) * frames * head_dim
        best = tl.full([group], float("-inf"), tl.float32)
        total = tl.zeros([group], tl.float32)
        acc = tl.zeros([group, head_dim], tl.float32)
        for start in range(0, frames, block):
            f = start + tl.arange(0, block)
            inside = f < frames
            where = base + f[:, None] * head_dim + d[None, :]
            keys = tl.load(k + where, mask=inside[:, None], other=0.0)
            scores = tl.dot(query, tl.trans(keys)) * scale
            scores = tl.where(inside[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, 1))
            weights = tl.exp(scores - new_best[:, None])
            shrink = tl.exp(best - new_best)
            total = total * shrink + tl.sum(weights, 1)
            vals = tl.load(v + where, mask=inside[:, None], other=0.0)
            acc = acc * shrink[:, None] + tl.dot(weights.to(vals.dtype), vals)
            best = new_best
        acc = acc / total[:, None]
        tl.store(out + at[:, None] + d[None, :], acc.to(out.dtype.element_ty), mask=valid[:, None])

    def launch(q: Any, k: Any, v: Any, leaders: Any, members: Any, out: Any) -> None:
        _, heads, frames, head_dim = k.shape
        grid = (members.shape[0], heads)
        grouped[grid](
            q, k, v, out, leaders, members, frames, heads, head_dim**-0.5,
            head_dim=head_dim, group=GROUP, block=BLOCK_FRAMES,
        )  # fmt: skip

    return launch
