"""The decode step with each window's rows (its beams) reading the window's cross-attention
keys and values once, against each row reading its own copy (random weights, benchmark only).
Run with `PYTHONPATH=src`:

  python3 benchmarks/gpu_beam_cross.py --out OUT [--model large-v3] [--rows 160] [--beam 5]

Every beam row holds its own copy of its window's cross-attention cache, and PyTorch's fused
kernel reads every row's. The engine's kernel (`batched/crossattn.py`) runs a program per
window and head that reads the window's leader row once and attends with every row of the
window. Two parts:
  attention alone   one layer's cross-attention over `rows` rows: PyTorch's fused kernel over
                    every row, the gathered form (each row reads its leader's copy through
                    PyTorch), the engine's kernel, and, for windows of `beam` consecutive rows,
                    the shared form (the beams as `beam` queries of one sequence through the
                    fused kernel: the ideal); for windows of `beam` rows and for greedy rows
  the step          the engine's captured step over `rows` rows in windows of `beam`, row by
                    row and grouped, at each length bucket, with the largest difference between
                    their logits
and what a row would hold if a window kept one copy.

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
from gpuscribe.workers.engines.batched import crossattn
from gpuscribe.workers.engines.batched.decoder import LENGTH_BUCKETS, StaticDecoder, _cudnn_first
from gpuscribe.workers.engines.transformers_engine import (
    TEST_ARCHITECTURE,
    _build_random,
    _configure_cuda,
    _Target,
)

log = logging.getLogger(__name__)


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
    report: dict[str, Any] = {}
    for name, group in (("beams", beam), ("greedy", 1)):
        windows = rows // group
        owner = torch.arange(rows, device=device) // group  # each row's window
        k_rows, v_rows = keys[owner], values[owner]  # each row its window's copy (the engine)
        table = crossattn.window_table(
            [range(w * group, (w + 1) * group) for w in range(windows)], rows
        )
        leaders, members = (torch.from_numpy(t).to(device) for t in table)
        owners = crossattn.leader_of_row(torch, leaders, members, rows)  # what gathering reads
        out = torch.zeros_like(q)
        runs = {
            "fused_every_row": lambda kr=k_rows, vr=v_rows: fused(q[:, :, None], kr, vr)[:, :, 0],
            "gathered": lambda kr=k_rows, vr=v_rows, lr=owners: fused(
                q[:, :, None], kr.index_select(0, lr), vr.index_select(0, lr)
            )[:, :, 0],
            "kernel": lambda kr=k_rows, vr=v_rows, ld=leaders, m=members, o=out: (
                crossattn.attend(q, kr, vr, ld, m, o) or o
            ),
        }
        if group > 1:
            runs["fused_shared"] = lambda w=windows, g=group: (
                fused(q.view(w, g, heads, dh).transpose(1, 2), keys[:w], values[:w])
                .transpose(1, 2).reshape(rows, heads, dh)
            )  # fmt: skip
        reference = runs["fused_every_row"]().float()
        entry: dict[str, Any] = {"windows": windows}
        for label, run in runs.items():
            entry[f"{label}_max_abs_diff"] = float((run().float() - reference).abs().max())
            if cuda:
                entry[f"{label}_ms"] = timed(torch, run, 50)
        report[name] = entry
        del k_rows, v_rows
    if cuda:
        torch.cuda.empty_cache()
    return report


def _fill(torch: Any, decoder: StaticDecoder, rows: int, group: int, device: Any) -> None:
    """Random audio for each window of `group` consecutive rows (the same for every row of a
    window, as the batch fills beams), random tokens, and the decoder told where windows are."""
    s = decoder.shape
    windows = rows // group
    hidden = torch.randn(windows, s.frames, s.d_model, device=device, dtype=decoder.dtype)
    index = torch.arange(rows, device=device)
    decoder.fill_cross(index, hidden, index // group)
    decoder.tokens[:rows] = torch.randint(0, s.vocab, (rows,), device=device)
    table = crossattn.window_table(
        [range(w * group, (w + 1) * group) for w in range(windows)], decoder.rows
    )
    decoder.set_windows(*(torch.from_numpy(t).to(device) for t in table))


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
    decoder = StaticDecoder(whisper, rows, use_graphs=cuda)
    if cuda:
        decoder.set_attention("sdpa")
    works = cuda and crossattn.triton_works(str(device))
    decoder.grouped = "kernel" if works else "gathered"
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
        "grouped": decoder.grouped,
        "bytes_a_row": {"each-row-its-copy": self_bytes + cross_bytes,
                        "a-copy-a-window": self_bytes + cross_bytes / args.beam},
        "attention_alone": alone,
        "by_length": {},
    }  # fmt: skip
    for length in LENGTH_BUCKETS:
        position = length - 1
        decoder.positions[:rows] = position
        row_by_row = decoder.step(rows, position).clone()
        grouped = decoder.step(rows, position, grouped=True).clone()
        entry: dict[str, Any] = {
            "max_abs_logit_diff": float((row_by_row - grouped).abs().max()),
            "max_abs_logit": float(row_by_row.abs().max()),
        }
        if cuda:
            for name, way in (("row_by_row", False), ("grouped", True)):
                run = lambda p=position, g=way: decoder.step(rows, p, grouped=g)  # noqa: E731
                entry[f"{name}_ms"] = timed(torch, run, 20)
            entry["grouped_over_row_by_row"] = entry["grouped_ms"] / entry["row_by_row_ms"]
        report["by_length"][str(length)] = entry
        log.info("length %d: %s", length, json.dumps(entry))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"beam-cross-{report['model']}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
