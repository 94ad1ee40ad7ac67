"""Copy the self-attention cache of the beam rows whose survivor continues another row, without
the host learning which rows those are.

The device chooses the beams (`beams.py`), so which rows move is known only on the device, and
asking would make the host wait for it. Three ways, by what is at hand:

- CUDA with Triton: one kernel over every beam row, whose programs copy a moved row's keys and
  values up to its own position and return at once for the others (about one beam row in eight
  moves with real weights at 5 beams): the work is what moved, not every beam row.
- CUDA without Triton: every beam row copied from its parent (itself where it did not move) up
  to the longest position; correct, and many times the bytes.
- The CPU: the moved rows are looked up (the CPU runs each operation as it is called, so the
  look-up waits for nothing) and only they are copied.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

BLOCK = 1024  # elements a Triton program copies at a time


METHODS = ("triton", "every", "looked-up")
_TRITON_FAILED: set[str] = set()  # devices whose Triton launch raised: they copy every row


def copy_moved(
    torch: Any,
    caches: tuple[Any, ...],
    sources: Any,
    targets: Any,
    lengths: Any,
    moved: Any,
    end: int,
    method: str | None = None,
) -> None:
    """For each `i` with `moved[i]`, rows `targets[i]` of every cache (`[layers, rows, heads,
    max_len, head_dim]`) take rows `sources[i]`'s first `lengths[i]` positions. No target is
    another's source (a moved row's own hypothesis died; its parent stays in place). `end`
    bounds every length (the host's knowledge of the positions). `method` (one of `METHODS`)
    is chosen by the device unless given (tests compare them)."""
    method = method or default_method(sources.device)
    if method == "triton" and _copy_with_triton(torch, caches, sources, targets, lengths, moved):
        return
    if method in ("triton", "every"):
        kept = torch.where(moved, sources, targets)  # an unmoved row copies itself
        for cache in caches:
            copy_layers(cache, kept, targets, end)
    elif method == "looked-up":
        _copy_looked_up(caches, sources, targets, lengths, moved)
    else:
        raise ValueError(f"unknown method {method!r}")


def default_method(device: Any) -> str:
    if device.type != "cuda":
        return "looked-up"
    name = str(device)
    return "triton" if _triton_works(name) and name not in _TRITON_FAILED else "every"


def _copy_with_triton(
    torch: Any, caches: tuple[Any, ...], sources: Any, targets: Any, lengths: Any, moved: Any
) -> bool:
    """The copy through the Triton kernel; False (logged, and this device copies every row from
    now on) where the launch raises: a kernel is compiled for each new specialization of its
    arguments, and one the trial at load did not meet could fail."""
    kernel = _triton_kernel()
    if kernel is None:
        raise RuntimeError("Triton is not available")
    try:
        kernel(caches, sources, targets, torch.where(moved, lengths, 0))
    except Exception:
        log.warning("the Triton row copy failed: beam rows copy every row of the batch's "
                    "beams from now on", exc_info=True)  # fmt: skip
        _TRITON_FAILED.add(str(sources.device))
        return False
    return True


@functools.cache
def _triton_works(device: str) -> bool:
    """Whether the Triton kernel compiles and copies right on `device`, tried once (at the
    model's load, through `StaticDecoder.capture_all`): Triton builds its launcher with the
    system's C compiler the first time, and a machine may lack one."""
    kernel = _triton_kernel()
    if kernel is None:
        return False
    import torch

    try:
        cache = torch.arange(16, dtype=torch.float16, device=device).view(1, 2, 1, 4, 2)
        one = torch.ones(1, dtype=torch.long, device=device)
        kernel((cache,), one, one - 1, one * 3)
        works = cache[0, 0, 0, :3].equal(cache[0, 1, 0, :3])
    except Exception:
        log.warning("the Triton row copy failed: beam rows copy every row of the batch's "
                    "beams", exc_info=True)  # fmt: skip
        return False
    if not works:
        log.warning("the Triton row copy copied wrong: beam rows copy every row instead")
    return bool(works)


def _copy_looked_up(
    caches: tuple[Any, ...], sources: Any, targets: Any, lengths: Any, moved: Any
) -> None:
    chosen = moved.nonzero()[:, 0]
    if chosen.numel():
        longest = int(lengths.index_select(0, chosen).max())
        moving, taking = sources.index_select(0, chosen), targets.index_select(0, chosen)
        for cache in caches:
            copy_layers(cache, moving, taking, longest)


def copy_layers(cache: Any, sources: Any, targets: Any, end: int) -> None:
    """`cache[:, targets, :, :end] = cache[:, sources, :, :end]` one layer at a time: each copy
    gathers its source rows into a temporary first, and one layer's temporary is a layer's share
    of what all layers at once would take (medium at 384 rows and 3 beams: 6.6 GiB at once ran an
    H100 out of memory while compacting). Rows are not split: a chunk could overwrite another's
    source."""
    for layer in cache:
        layer[targets, :, :end] = layer[sources, :, :end]


@functools.cache
def _triton_kernel() -> Callable[..., None] | None:
    """The Triton launcher, or None (logged once) where Triton cannot be imported."""
    try:
        import triton
        import triton.language as tl
    except Exception:  # not installed, or built for another driver
        log.warning("Triton is not available: beam rows copy every row of the batch's beams")
        return None

    @triton.jit  # type: ignore[untyped-decorator]
    def copy_rows(  # type: ignore[no-untyped-def]
        cache, sources, targets, lengths, layer_stride, heads, max_len, head_dim,
        block: tl.constexpr,
    ):  # fmt: skip
        pair = tl.program_id(0)
        layer_head = tl.program_id(1).to(tl.int64)
        count = tl.load(lengths + pair) * head_dim  # 0 where the row did not move
        row_stride = heads * max_len * head_dim
        base = (layer_head // heads) * layer_stride + (layer_head % heads) * max_len * head_dim
        source = base + tl.load(sources + pair) * row_stride
        target = base + tl.load(targets + pair) * row_stride
        for start in range(0, count, block):
            offsets = start + tl.arange(0, block)
            inside = offsets < count
            values = tl.load(cache + source + offsets, mask=inside)
            tl.store(cache + target + offsets, values, mask=inside)

    def launch(caches: tuple[Any, ...], sources: Any, targets: Any, lengths: Any) -> None:
        for cache in caches:  # rows contiguous; layers `stride(0)` apart (a pooled cache's view)
            layers, _, heads, max_len, head_dim = cache.shape
            grid = (sources.shape[0], layers * heads)
            copy_rows[grid](
                cache, sources, targets, lengths, cache.stride(0), heads, max_len, head_dim,
                block=BLOCK,
            )  # fmt: skip

    return launch
