"""How full a pooled cache's rows stay (`engines/batched/slots.py`), in a pure simulation: an
endless queue of windows of 5 beams, of greedy windows, and of both at random, each living 10 to
224 steps, started whenever they fit. A window takes the highest free slot (`SlotAllocator`);
"packed" is the ideal where the slots taken always lie together at the pool's top (what moving
slots could give). Large-v3's pool of an H100's 168 rows' bytes.

  PYTHONPATH=src python3 benchmarks/slot_fill.py [--steps 20000]

Prints the mean rows in use a step (after the first tenth) under each policy.
"""

from __future__ import annotations

import argparse
import random
import statistics

from gpuscribe.memory.architectures import ARCHITECTURES
from gpuscribe.workers.engines.batched.decoder import batch_buckets
from gpuscribe.workers.engines.batched.slots import PoolLayout, SlotAllocator

CACHE_ROWS = 168


def mean_rows(mix: tuple[int, ...], packed: bool, steps: int) -> float:
    arch = ARCHITECTURES["large-v3"]
    layout = PoolLayout.sized(
        CACHE_ROWS,
        arch.max_target_positions * arch.d_model,
        arch.max_source_positions * arch.d_model,
    )
    slots = SlotAllocator(layout, batch_buckets(layout.rows, (CACHE_ROWS,)))
    rng = random.Random(0)
    live: list[tuple[int, int, int]] = []  # (last step, slot, rows)
    waiting = rng.choice(mix)
    used = []
    for step in range(steps):
        for _, slot, _ in [w for w in live if w[0] <= step]:
            slots.give(slot)
        live = [w for w in live if w[0] > step]
        if packed:
            slots.clear()
            live = [(end, slots.take(), rows) for end, _, rows in live]
        while slots.fits(sum(w[2] for w in live), [waiting]):
            live.append((step + rng.randint(10, 224), slots.take(), waiting))
            waiting = rng.choice(mix)
        used.append(sum(w[2] for w in live))
    return statistics.mean(used[steps // 10 :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()
    for name, mix in (("5 beams", (5,)), ("greedy", (1,)), ("both", (1, 5))):
        figures = [mean_rows(mix, packed, args.steps) for packed in (False, True)]
        print(f"{name}: highest free {figures[0]:.1f} rows a step, packed {figures[1]:.1f}")


if __name__ == "__main__":
    main()
