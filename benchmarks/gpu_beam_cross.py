"""How much a decode step would gain if the beams of a window shared one copy of its audio's
cross-attention keys and values (random weights, benchmark only). Run with `PYTHONPATH=src`:

  python3 benchmarks/gpu_beam_cross.py --out OUT [--model large-v3] [--rows 160] [--beam 5]

Today every beam row holds, and every step reads, its own copy of its window's cross-attention
cache. This times the engine's captured decode step over `rows` rows two ways, at each length
bucket:
  per-row   the engine's step as it is (each row attends to its own cross-attention row)
  shared    the same step with the cross-attention of each group of `beam` consecutive rows
            computed as one sequence of `beam` queries against the group's first row
            (`[rows/beam, heads, beam, head_dim]` against `[rows/beam, heads, frames,
            head_dim]`), the other rows of the group never read
and checks that both give the same logits when the rows of a group hold the same audio (the
beams of one window do). The memory a row would need under each layout is reported beside the
times.

The shared form needs each window's beams in consecutive rows, which the batch's compaction does
not keep. A layout that keeps rows where they are would look each row's window up instead: a
kernel whose program takes one window (slot) and head, reads the slot's keys and values once
and attends with every row of the window (`members[slot]`, up to 16). Its prototype (Triton,
benchmark only) is timed on one layer's cross-attention alone against PyTorch's fused kernel
over every row (the engine's) and the shared form, with a batch of beam windows and with a
batch of greedy rows (one member a slot), and its output compared with theirs.

JSON goes to OUT/beam-cross-MODEL.json. On a CPU (`--device cpu`, a small architecture, with
TRITON_INTERPRET=1 for the kernel) it checks the equalities only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from gpu_attention import timed  # this folder, run as a script

from gpuscribe.memory.architectures import ARCHITECTURES
from gpuscribe.workers.engines.batched.decoder import (
    LENGTH_BUCKETS,
    StaticDecoder,
    _cudnn_first,
    _Layer,
)
from gpuscribe.workers.engines.transformers_engine import (
    TEST_ARCHITECTURE,
    _build_random,
    _configure_cuda,
    _Target,
)

log = logging.getLogger(__name__)


class SharedCrossDecoder(StaticDecoder):
    """The engine's decoder with each group of `group` consecutive rows attending to the
    cross-attention keys and values of the group's first row, as one sequence of `group`
    queries."""

    group = 1

    def _cross(self, layer: _Layer, index: int, x: Any, rows: Any, n: int, length: int) -> Any:
        g = self.group
        if length != 1 or g == 1 or not isinstance(rows, slice) or n % g:
            return super()._cross(layer, index, x, rows, n, length)
        F = self._torch.nn.functional
        s = self.shape
        windows = n // g
        q = F.linear(layer.ln2(x), layer.xq_w, layer.xq_b)  # [n, 1, d]
        q = q.view(windows, g, s.heads, s.head_dim).transpose(1, 2)  # [w, heads, g, dh]
        keys = self.cross_k[index, 0:n:g]  # [w, heads, frames, dh], strided rows
        values = self.cross_v[index, 0:n:g]
        if self._decode_cross is not None:
            with self._decode_cross():
                a = F.scaled_dot_product_attention(q, keys, values)
        else:
            a = F.scaled_dot_product_attention(q, keys, values)
        a = a.transpose(1, 2).reshape(n, 1, s.d_model)
        return F.linear(a, layer.xout_w, layer.xout_b)


GROUP = 16  # rows a slot can hold in the prototype kernel (tl.dot needs 16 or more)
BLOCK_FRAMES = 64


def triton_cross() -> Any:
    """The prototype kernel's launcher: `launch(q [n, heads, dh], k, v [slots, heads, frames,
    dh], members [slots, GROUP] int32 (-1: none), out [n, heads, dh])`."""
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator]
    def attend(  # type: ignore[no-untyped-def]
        q, k, v, out, members, frames, heads, scale,
        head_dim: tl.constexpr, group: tl.constexpr, block: tl.constexpr,
    ):  # fmt: skip
        slot = tl.program_id(0)
        head = tl.program_id(1)
        rows = tl.load(members + slot * group + tl.arange(0, group))
        valid = rows >= 0
        if tl.max(rows) < 0:
            return
        d = tl.arange(0, head_dim)
        at = (tl.where(valid, rows, 0).to(tl.int64) * heads + head) * head_dim
        query = tl.load(q + at[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        base = (slot.to(tl.int64) * heads + head) * frames * head_dim
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
            values = tl.load(v + where, mask=inside[:, None], other=0.0)
            acc = acc * shrink[:, None] + tl.dot(weights.to(values.dtype), values)
            best = new_best
        acc = acc / total[:, None]
        tl.store(out + at[:, None] + d[None, :], acc.to(out.dtype.element_ty), mask=valid[:, None])

    def launch(q: Any, k: Any, v: Any, members: Any, out: Any) -> None:
        _, heads, frames, head_dim = k.shape
        grid = (members.shape[0], heads)
        scale = head_dim**-0.5
        attend[grid](
            q, k, v, out, members, frames, heads, scale,
            head_dim=head_dim, group=GROUP, block=BLOCK_FRAMES,
        )  # fmt: skip

    return launch


def attention_alone(torch: Any, shape: Any, rows: int, beam: int, device: Any, dtype: Any) -> Any:
    """One layer's cross-attention at `rows` rows: PyTorch's fused kernel over every row (the
    engine's), the shared form, and the prototype kernel, for windows of `beam` rows and for
    greedy rows. Milliseconds on CUDA, and each output's largest difference from the fused
    kernel's over the same rows."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    cuda = device.type == "cuda"
    if cuda:  # cuDNN's kernel first, as the engine's decode step asks
        prefer_cudnn = _cudnn_first()

        def fused(*args: Any) -> Any:
            with prefer_cudnn():
                return sdpa(*args)
    else:
        fused = sdpa
    heads, frames, dh = shape.heads, shape.frames, shape.head_dim
    options = {"device": device, "dtype": dtype}
    keys = torch.randn(rows, heads, frames, dh, **options)
    values = torch.randn(rows, heads, frames, dh, **options)
    q = torch.randn(rows, heads, dh, **options)
    launch = triton_cross()
    report: dict[str, Any] = {}
    for name, group in (("beams", beam), ("greedy", 1)):
        slots = rows // group
        owner = torch.arange(rows, device=device) // group  # each row's slot
        k_rows, v_rows = keys[:slots][owner], values[:slots][owner]  # per-row copies
        members = torch.full((rows, GROUP), -1, dtype=torch.int32, device=device)
        members[:slots, :group] = torch.arange(rows, device=device, dtype=torch.int32).view(
            slots, group
        )
        out = torch.empty_like(q)
        runs = {
            "fused_every_row": lambda kr=k_rows, vr=v_rows: fused(q[:, :, None], kr, vr)[:, :, 0],
            "triton_slots": lambda m=members, o=out: launch(q, keys, values, m, o) or o,
        }
        if group > 1:
            runs["fused_shared"] = lambda s=slots, g=group: (
                fused(
                    q.view(s, g, heads, dh).transpose(1, 2), keys[:s], values[:s]
                ).transpose(1, 2).reshape(rows, heads, dh)
            )  # fmt: skip
        reference = runs["fused_every_row"]().float()
        entry: dict[str, Any] = {"slots": slots}
        for label, run in runs.items():
            entry[f"{label}_max_abs_diff"] = float((run().float() - reference).abs().max())
            if cuda:
                entry[f"{label}_ms"] = timed(torch, run, 50)
        report[name] = entry
        del k_rows, v_rows
    if cuda:
        torch.cuda.empty_cache()
    return report


def _fill(torch: Any, decoder: SharedCrossDecoder, rows: int, group: int, device: Any) -> None:
    """Random audio for each group of rows (the same for every row of a group), random tokens,
    and positions spread over the length buckets."""
    s = decoder.shape
    windows = rows // group
    hidden = torch.randn(windows, s.frames, s.d_model, device=device, dtype=decoder.dtype)
    index = torch.arange(rows, device=device)
    decoder.fill_cross(index, hidden, index // group)
    decoder.tokens[:rows] = torch.randint(0, s.vocab, (rows,), device=device)


def _logits(decoder: SharedCrossDecoder, group: int, rows: int, position: int) -> Any:
    decoder.group = group
    decoder.positions[:rows] = position
    decoder._graphs.clear()
    return decoder.step(rows, position).clone()


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="large-v3")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    cuda = args.device == "cuda"
    device = torch.device(args.device)
    arch = ARCHITECTURES[args.model] if cuda else TEST_ARCHITECTURE
    dtype = torch.float16 if cuda else torch.float32
    whisper = _build_random(arch, _Target(device, dtype)).eval()
    if cuda:
        _configure_cuda(torch)
    rows = args.rows - args.rows % args.beam
    shape = StaticDecoder(whisper, 1, use_graphs=False).shape
    alone = attention_alone(torch, shape, rows, args.beam, device, dtype)
    log.info("one layer's cross-attention alone: %s", json.dumps(alone))
    decoder = SharedCrossDecoder(whisper, rows, use_graphs=cuda)
    if cuda:
        decoder.set_attention("sdpa")
    _fill(torch, decoder, rows, args.beam, device)
    s = decoder.shape
    element = torch.finfo(dtype).bits // 8
    self_bytes = s.layers * 2 * s.heads * s.head_dim * s.max_len * element
    cross_bytes = s.layers * 2 * s.heads * s.head_dim * s.frames * element
    report: dict[str, Any] = {
        "model": args.model if cuda else "test",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "rows": rows,
        "beam": args.beam,
        "bytes_a_row": {"per-row": self_bytes + cross_bytes,
                        "shared": self_bytes + cross_bytes / args.beam},
        "attention_alone": alone,
        "by_length": {},
    }  # fmt: skip
    for length in LENGTH_BUCKETS:
        position = length - 1
        per_row = _logits(decoder, 1, rows, position)
        shared = _logits(decoder, args.beam, rows, position)
        entry: dict[str, Any] = {
            "max_abs_logit_diff": float((per_row - shared).abs().max()),
            "max_abs_logit": float(per_row.abs().max()),
        }
        if cuda:
            for name, group in (("per-row", 1), ("shared", args.beam)):
                decoder.group = group
                decoder._graphs.clear()
                decoder.step(rows, position)
                entry[f"{name}_ms"] = timed(torch, lambda p=position: decoder.step(rows, p), 20)
            entry["shared_over_per_row"] = entry["shared_ms"] / entry["per-row_ms"]
        report["by_length"][str(length)] = entry
        log.info("length %d: %s", length, json.dumps(entry))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"beam-cross-{report['model']}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
