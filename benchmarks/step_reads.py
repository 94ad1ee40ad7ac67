"""What a decode step reads, in bytes of large-v3, over the stream the GPU benchmarks run: the
batcher's real row positions, counted on the CPU.

A decode step at large batch sizes is bound by memory reads (the profiles in
`docs/benchmarks/h200-batching.md`): the decoder's weights, each window's cross-attention keys
and values, and each row's self-attention keys and values. PyTorch's self-attention forms read
every row of the step's bucket up to the step's length bucket; the "ragged" form
(`batched/selfattn.py`) reads each row's own positions. This runs the engine (the same batcher
as on a GPU, with `benchmarks/gpu_batching.py`'s stream of tasks and tokens per window) on the
CPU with a small random model, records each step's rows, positions and windows, and prices them
at large-v3's sizes in float16:

  PYTHONPATH=src python3 benchmarks/step_reads.py [--rows 64] [--beam 5] [--tasks 40]
      [--layout pooled] [--model test]

It prints the mean bytes a step reads, by part, with each form, and their ratio: where the step
is bound by reads, the ratio is what the ragged form can save of a step's time. A model of
reads, not a time: the GPU measures time (`bash benchmarks/gpu_session.sh attention`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gpu_batching import load, part_engine, stream_lengths

from gpuscribe.workers.engines.batched.decoder import LENGTH_BUCKETS, bucket_for

# large-v3's decoder (`transformers_engine.ARCHITECTURES`), float16
LAYERS, WIDTH, VOCAB, FRAMES, ELEMENT = 32, 1280, 51866, 1500, 2
WEIGHT_BYTES = (LAYERS * 14 * WIDTH * WIDTH + VOCAB * WIDTH) * ELEMENT  # self 4, cross 2, mlp 8
POSITION_BYTES = LAYERS * 2 * WIDTH * ELEMENT  # one position's keys and values, every layer


@dataclass
class Reads:
    """Sums over the recorded steps."""

    steps: int = 0
    rows: int = 0  # real rows
    bucket_rows: int = 0
    windows: int = 0
    plain_positions: int = 0  # bucket rows x length bucket
    ragged_positions: int = 0  # each bucket row's own positions, up to the length bucket
    lengths: dict[int, int] = field(default_factory=dict)


def record_steps(decoder: Any, reads: Reads) -> None:
    """Wrap `decoder.step` to add each step's rows, positions and windows to `reads`."""
    step = decoder.step

    def recorded(count: int, max_position: int, *, grouped: bool = False) -> Any:
        bucket = bucket_for(count, decoder.batch_buckets)
        length = bucket_for(max_position + 1, LENGTH_BUCKETS)
        positions = decoder.positions[:bucket].numpy()
        leaders = decoder.leaders[:bucket].numpy()
        reads.steps += 1
        reads.rows += count
        reads.bucket_rows += bucket
        reads.windows += len(set(leaders[leaders >= 0].tolist())) if decoder.pooled else count
        reads.plain_positions += bucket * length
        reads.ragged_positions += int((np.minimum(positions, length - 1) + 1).sum())
        reads.lengths[length] = reads.lengths.get(length, 0) + 1
        if reads.steps % 100 == 0:  # a long CPU run shows where it is
            share = reads.ragged_positions / reads.plain_positions
            print(f"{reads.steps} steps, {reads.rows / reads.steps:.0f} rows a step, ragged "
                  f"self-attention {share:.2f} of plain", file=sys.stderr, flush=True)  # fmt: skip
        return step(count, max_position, grouped=grouped)

    decoder.step = recorded


def priced(reads: Reads) -> dict[str, Any]:
    steps = max(1, reads.steps)
    weights = WEIGHT_BYTES
    cross = reads.windows / steps * FRAMES * POSITION_BYTES
    plain = reads.plain_positions / steps * POSITION_BYTES
    ragged = reads.ragged_positions / steps * POSITION_BYTES
    gb = 1e9
    return {
        "steps": reads.steps,
        "mean_rows": reads.rows / steps,
        "mean_bucket_rows": reads.bucket_rows / steps,
        "mean_windows": reads.windows / steps,
        "length_buckets": dict(sorted(reads.lengths.items())),
        "gb_per_step": {
            "weights": weights / gb,
            "cross_attention": cross / gb,
            "self_attention_plain": plain / gb,
            "self_attention_ragged": ragged / gb,
        },
        "self_attention_ragged_over_plain": ragged / max(plain, 1),
        "step_ragged_over_plain": (weights + cross + ragged) / (weights + cross + plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="the cache's rows (bytes)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--longest", type=float, default=600, help="longest task, seconds")
    parser.add_argument("--layout", default="pooled", help="per-row or pooled")
    parser.add_argument("--model", default="test", help="the model run on the CPU (test: tiny's "
                        "two-layer, 64-wide test model, the fastest; positions do not depend on "
                        "it)")  # fmt: skip
    args = parser.parse_args()
    test = args.model == "test"
    model = load("tiny" if test else args.model, args.rows, True, args.layout, small=test)
    reads = Reads()
    record_steps(model.decoder, reads)
    lengths = stream_lengths(args.tasks, longest=args.longest)
    run = part_engine(model, lengths, args.tasks, args.beam)
    report = {
        "rows": args.rows,
        "layout": args.layout,
        "beam": args.beam,
        "tasks": args.tasks,
        "audio_seconds": run["audio_seconds"],
        "failures": run["failure_count"],
        **priced(reads),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
