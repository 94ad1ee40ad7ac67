"""How long an urgent task waits for the continuous batch when the batch is saturated, in one
process (random weights, benchmark only): the engine a worker runs, a stream of tasks of all
four priorities (a quarter of them urgent, as in `gpu_report.py stream`), each on its own thread,
and after `--urgent-after` seconds `--urgent` greedy 30 s tasks at URGENT, one after another.

  PYTHONPATH=src python3 benchmarks/urgent_wait.py --cpu [--model tiny --rows 40 --beam 5]

Prints, per probe, the seconds from its submission to its first window in the batch (what the
issue asks to be within 2 s on a GPU) and to its end, and the stream's audio-s/s. On the CPU the
times mean something only against another run of the same script (for instance on the commit
before a change to the batcher's order); the waits are set by the order, not by the device.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np
from gpu_batching import load, stream_lengths  # type: ignore[import-not-found]

from gpuscribe.audio import SAMPLE_RATE
from gpuscribe.domain import Priority, TranscriptionOptions

PRIORITIES = [Priority.URGENT, Priority.HIGH, Priority.NORMAL, Priority.LOW]


def _run(model: Any, seconds: float, beam: int, priority: Priority) -> tuple[float, Any]:
    """One task through the engine: when it was submitted and its transcript."""
    options = TranscriptionOptions(engine="transformers", model="bench", beam_size=beam)
    audio = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    submitted = time.time()
    transcript = model.transcribe(
        audio, options, lambda s, p: None, lambda: False, priority=int(priority)
    )
    return submitted, transcript


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--longest", type=float, default=600, help="longest task, seconds")
    parser.add_argument("--urgent", type=int, default=3)
    parser.add_argument("--urgent-after", type=float, default=10.0)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    model = load(args.model, args.rows, args.cpu)
    lengths = stream_lengths(args.tasks, longest=args.longest)
    failures: list[str] = []

    def task(i: int, seconds: float) -> None:
        try:
            _run(model, seconds, args.beam, PRIORITIES[i % 4])
        except Exception as exc:  # reported, not raised: one failure must not stop the run
            failures.append(repr(exc))

    start = time.perf_counter()
    threads = [threading.Thread(target=task, args=(i, s)) for i, s in enumerate(lengths)]
    for t in threads:
        t.start()
    time.sleep(args.urgent_after)
    probes = []
    for _ in range(args.urgent):
        submitted, transcript = _run(model, 30.0, 1, Priority.URGENT)
        began = transcript.decoding_started_at
        probes.append({"to_decode_s": None if began is None else began - submitted,
                       "to_finish_s": time.time() - submitted})  # fmt: skip
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    report = {
        "model": args.model, "rows": args.rows, "beam": args.beam, "tasks": args.tasks,
        "audio_s_per_s": (sum(lengths) + 30.0 * args.urgent) / wall, "wall_s": wall,
        "probes": probes, "failures": failures,
    }  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
