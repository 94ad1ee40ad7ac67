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
times. JSON goes to OUT/beam-cross-MODEL.json. On a CPU (`--device cpu`, a small architecture)
it checks the equality only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from gpu_attention import timed  # this folder, run as a script

from gpuscribe.memory.architectures import ARCHITECTURES
from gpuscribe.workers.engines.batched.decoder import LENGTH_BUCKETS, StaticDecoder, _Layer
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
