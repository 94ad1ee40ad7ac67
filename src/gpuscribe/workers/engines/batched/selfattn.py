"""The decode step's self-attention, each row reading its own positions only ("ragged").

A step's self-attention is one query a row over the text written so far. PyTorch's forms
(`decoder.py`: "sdpa", "bmm", "kq") read every row's keys and values up to the step's length
bucket, the longest row's, and mask what lies past each row's own position. In a continuous
batch the rows are at every stage of their windows, so most of those bytes are masked: at 5
beams in a pooled cache, where one window's audio serves five rows, the self-attention is
about half of what a step reads. Here a Triton program takes one row and one head and reads
positions `0..position` of that row only (flash-decoding's online softmax, in blocks of
`BLOCK` positions); the loop's bound is read from the device, so the step stays one captured
graph.

The decoder times this form beside PyTorch's at load for each row bucket and keeps the fastest
(`decoder.StaticDecoder._capture`), where the kernel passed its trial (`triton_works`); where
Triton is missing (the CPU, a machine without a C compiler) the step never uses it.
`attend_masked` gives the same result through PyTorch: the trial and the tests compare with it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

BLOCK = 64  # positions a program reads at a time


def attend_masked(torch: Any, q: Any, keys: Any, values: Any, positions: Any, length: int) -> Any:
    """Rows `q` (`[n, heads, 1, head_dim]`) attending to their keys and values (`[>= n, heads,
    >= length, head_dim]`) at positions `0..min(positions[i], length - 1)`, through PyTorch:
    `[n, heads, 1, head_dim]`."""
    n = q.shape[0]
    at = torch.arange(length, device=q.device)
    visible = (at[None, :] <= positions[:n, None])[:, None, None, :]
    keys, values = keys[:n, :, :length], values[:n, :, :length]
    return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=visible)


def attend(q: Any, keys: Any, values: Any, positions: Any, length: int, out: Any) -> None:
    """What `attend_masked` gives, into `out` (`[n, heads, 1, head_dim]`, contiguous), each
    row reading only its own positions. `q` and the caches may be strided views (the fused
    query/key/value product; a pooled cache's rows) whose last dimension is contiguous;
    `keys` and `values` share their strides."""
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("Triton is not available")
    kernel(q, keys, values, positions, length, out)


@functools.cache
def triton_works(device: str) -> bool:
    """Whether the kernel compiles and attends as PyTorch does on `device`, tried once at the
    model's load (Triton builds its launcher with the system's C compiler the first time)."""
    if _kernel() is None:
        return False
    import torch

    try:
        generator = torch.Generator().manual_seed(0)
        dtype = torch.float16 if "cuda" in device else torch.float32
        fused = torch.randn(3, 1, 3 * 2 * 16, generator=generator).to(device, dtype)
        q = fused[..., : 2 * 16].view(3, 1, 2, 16).transpose(1, 2)  # as the step makes it
        keys, values = (
            torch.randn(4, 2, 70, 16, generator=generator).to(device, dtype) for _ in range(2)
        )
        positions = torch.tensor([0, 69, 40, 9], device=device)  # 69: past the length
        out = torch.zeros(3, 2, 1, 16, device=device, dtype=dtype)
        attend(q, keys, values, positions, 66, out)
        expected = attend_masked(torch, q, keys, values, positions, 66)
        works = bool(torch.allclose(out.float(), expected.float(), atol=2e-2))
    except Exception:
        log.warning("the Triton self-attention failed: steps read every row to the longest "
                    "row's length", exc_info=True)  # fmt: skip
        return False
    if not works:
        log.warning("the Triton self-attention attended wrong: steps do not use it")
    return works


@functools.cache
def _kernel() -> Callable[..., None] | None:
    """The Triton launcher, or None where Triton cannot be imported."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # not installed, or built for another driver
        log.info("Triton is not available: steps read every row to the longest row's length")
        return None

    @triton.jit  # type: ignore[untyped-decorator]
    def ragged(  # type: ignore[no-untyped-def]
        q, k, v, out, positions, length, q_row, q_head, k_row, k_head, scale,
        head_dim: tl.constexpr, block: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        head = tl.program_id(1)
        last = tl.minimum(tl.load(positions + row), length - 1).to(tl.int32)
        d = tl.arange(0, head_dim)
        query = tl.load(q + row.to(tl.int64) * q_row + head * q_head + d).to(tl.float32)
        base = row.to(tl.int64) * k_row + head * k_head
        best = -float("inf")
        total = 0.0
        acc = tl.zeros([head_dim], tl.float32)
        for start in range(0, last + 1, block):
            p = start + tl.arange(0, block)
            inside = p <= last
            where = base + p[:, None] * head_dim + d[None, :]
            keys = tl.load(k + where, mask=inside[:, None], other=0.0).to(tl.float32)
            scores = tl.sum(keys * query[None, :], 1) * scale
            scores = tl.where(inside, scores, float("-inf"))
            new_best = tl.maximum(tl.max(scores, 0), best)
            shrink = tl.exp(best - new_best)
            weights = tl.exp(scores - new_best)
            vals = tl.load(v + where, mask=inside[:, None], other=0.0).to(tl.float32)
            acc = acc * shrink + tl.sum(weights[:, None] * vals, 0)
            total = total * shrink + tl.sum(weights, 0)
            best = new_best
        at = (row.to(tl.int64) * tl.num_programs(1) + head) * head_dim + d
        tl.store(out + at, (acc / total).to(out.dtype.element_ty))

    def launch(q: Any, k: Any, v: Any, positions: Any, length: int, out: Any) -> None:
        rows, heads, _, head_dim = q.shape
        if k.stride() != v.stride() or k.stride(3) != 1 or k.stride(2) != head_dim:
            raise ValueError("keys and values must share a layout with contiguous positions")
        if q.stride(3) != 1 or out.shape != q.shape or not out.is_contiguous():
            raise ValueError("the queries' last dimension must be contiguous, and the output "
                             "contiguous and of the queries' shape")  # fmt: skip
        ragged[(rows, heads)](
            q, k, v, out, positions, length, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), head_dim**-0.5, head_dim=head_dim, block=BLOCK,
        )  # fmt: skip

    return launch
