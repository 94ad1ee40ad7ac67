"""The batcher's host work per decode step, on the CPU, with a tiny random Whisper: how long
catching up with a step takes (the rows' bookkeeping, the replay of the device's beam choices).
On a GPU this work runs while the device works through the steps queued ahead of it, so it must
stay below a step's time, or the device waits for the host.

  PYTHONPATH=src python3 benchmarks/batcher_host.py [--rows 200] [--windows 40] [--beam 5]
      [--pooled]

Prints the steps, the seconds by part of the batcher's loop, and the catch-up per step.
Times on this machine's CPU mean something only against another run of the same script.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np


def main() -> None:
    import torch

    from gpuscribe.workers.engines.batched.batcher import Batcher, EncoderInput
    from gpuscribe.workers.engines.batched.decoder import StaticDecoder
    from gpuscribe.workers.engines.batched.model import vocabulary_from_tokenizer
    from gpuscribe.workers.engines.batched.search import DecodeOptions
    from gpuscribe.workers.engines.transformers_engine import (
        TEST_ARCHITECTURE,
        _build_random,
        _random_info,
        _Target,
    )

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=30, help="tokens decoded per window")
    parser.add_argument(
        "--pooled", action="store_true", help="a pooled cache of --rows rows' bytes (slots.py)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    arch = TEST_ARCHITECTURE
    whisper = _build_random(arch, _Target(torch.device("cpu"), torch.float32))
    info = _random_info(arch)
    vocabulary = vocabulary_from_tokenizer(info.tokenizer_file, arch.vocab_size, info)
    decoder = StaticDecoder(whisper, args.rows, use_graphs=False, pooled=args.pooled)
    batcher = Batcher(decoder, vocabulary, arch.n_mels)
    frames = 2 * arch.max_source_positions
    features = np.random.default_rng(0).normal(size=(args.windows, arch.n_mels, frames))
    options = DecodeOptions(
        beam_size=args.beam, max_length=2 * args.tokens + 20, suppress_tokens=(),
        forced_length=args.tokens,
    )  # fmt: skip
    prompts = [[vocabulary.sot]] * args.windows
    batcher.generate(EncoderInput(features=features[:2].astype(np.float32)), prompts[:2], options)
    batcher.seconds = dict.fromkeys(batcher.seconds, 0.0)
    steps = batcher.steps
    started = time.perf_counter()
    results = batcher.generate(EncoderInput(features=features.astype(np.float32)), prompts, options)
    wall = time.perf_counter() - started
    steps = batcher.steps - steps
    digest = hashlib.md5(str([r.sequences_ids for r in results]).encode()).hexdigest()[:12]
    seconds = {k: round(v, 3) for k, v in batcher.seconds.items()}
    catch_up = 1000 * batcher.seconds["select"] / max(1, steps)
    print(f"wall {wall:.2f} s, {steps} steps, results {digest}, seconds {seconds}")
    print(f"catching up with a step: {catch_up:.2f} ms")
    batcher.close()


if __name__ == "__main__":
    main()
