"""The continuous batch against a `generate` loop and the plain-PyTorch ceiling, in one process
on one GPU (random weights, benchmark only). Run on a GPU machine with `PYTHONPATH=src`:

  python3 benchmarks/gpu_batching.py --out OUT --model large-v3 --tasks 300 --threads 5,64

  ceiling   the encoder at batch 64, then one static-cache decode step captured in a CUDA graph
            over 256 rows (no decoding rules, argmax only): audio-s/s at the stream's mean tokens
  generate  Hugging Face `generate` over the stream's windows at batch 16/64/128, each batch
            decoding its longest window's token count (what a plain loop must do)
  timeline  the engine over the stream's first --timeline-tasks tasks under the profiler: how
            long the device was busy, per stream (the encoder's side stream and the steps'),
            both at once, and idle (optionally again at each --priorities decode priority)
  engine    the engine a worker runs (`TransformersEngine` -> `BatchedModel`), the stream's tasks
            run by N threads at once (what a worker does at MAX_TASKS_PER_GPU=N)

The stream: task lengths log-uniform from 5 s to 20 min (seeded), tokens per 30 s window drawn
per window (mean about 100, 10 to 224) so that rows end at different steps. Figures are
audio seconds per wall second, and ratios between parts of the same run; JSON goes to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpuscribe.audio import SAMPLE_RATE, WINDOW_SECONDS
from gpuscribe.domain import TranscriptionOptions
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.engines.batched.batcher import LOOKAHEAD
from gpuscribe.workers.engines.batched.decoder import ATTENTION_KINDS, PYTORCH_KINDS
from gpuscribe.workers.engines.transformers_engine import TransformersEngine
from gpuscribe.workers.messages import DeviceRef


def stream_lengths(tasks: int, seed: int = 7, longest: float = 1200) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(rng.uniform(math.log(5), math.log(longest))) for _ in range(tasks)]


def window_tokens(model: Any, lengths: list[float]) -> list[int]:
    """The tokens each window of the stream decodes (the engine's own draw)."""
    tokens = []
    for seconds in lengths:
        audio = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
        draw = model._forced_lengths(audio)
        tokens += [draw(i) for i in range(math.ceil(seconds / WINDOW_SECONDS))]
    return tokens


def load(
    model_name: str, rows: int, on_cpu: bool = False, layout: str = "auto", small: bool = False
) -> Any:
    """The engine's model with random weights; `on_cpu` for a smoke run of the engine part
    (float32, no graphs: occupancy and step counts mean the same, times do not); `layout`: the
    cache's (GPUSCRIBE_BATCH_LAYOUT); `small`: the tests' two-layer, 64-wide model in place of
    `model_name`'s (steps a fraction of tiny's cost; the batch's rows and positions the same)."""
    if on_cpu:
        device = DeviceRef(DeviceKind.CPU, "cpu", 0, "cpu")
    else:
        device = DeviceRef(DeviceKind.CUDA, "GPU-bench", 0, "bench")
    engine = TransformersEngine(
        benchmark_only=True, tiny_config_for_tests=small, benchmark_tokens=0, batch_rows=rows,
        batch_layout=layout,
    )  # fmt: skip
    return engine.load(model_name, device, "float32" if on_cpu else "float16")


def _set_attention(model: Any, attention: str) -> None:
    """The engine's self-attention (`--attention`), its graphs captured again as at load."""
    decoder = model.decoder
    if attention == "plain":
        decoder.set_attention("auto", PYTORCH_KINDS)
    else:
        decoder.set_attention(attention)
    model.batcher.call(model.batcher.capture_graphs)


def part_ceiling(model: Any, mean_tokens: float) -> dict[str, Any]:
    """The ceiling with each of PyTorch's attention forms (the issue's (c) is the best of
    them), and with the engine's "ragged" form where its kernel works: every row of the
    ceiling is at the same position, so it reads what the others read, less the length
    bucket's padding."""
    from gpuscribe.workers.engines.batched import selfattn

    results = {}
    kinds = ATTENTION_KINDS if selfattn.triton_works(str(model.decoder.device)) else PYTORCH_KINDS
    for kind in kinds:
        model.decoder.set_attention(kind)
        results[kind] = _ceiling(model, mean_tokens)
    return results


def _encoder_seconds(encode: Any, features: Any) -> float:
    """Seconds per window of `encode` over `features` (a batch), after two warm-up passes."""
    import torch

    with torch.inference_mode():
        for _ in range(2):
            encode(features)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            encode(features)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (4 * features.shape[0])


def _ceiling(model: Any, mean_tokens: float) -> dict[str, Any]:
    """The issue's ceiling: Hugging Face's encoder at batch 64, then the captured decode step
    at each row count; also what the engine's own (fused) encoder makes of it."""
    import torch

    decoder = model.decoder
    features = torch.randn(64, model.backend.n_mels, 3000, device="cuda", dtype=decoder.dtype)
    timings = {}
    hf_per_window = _encoder_seconds(lambda f: decoder.hf_encoder(f).last_hidden_state, features)
    encoder_per_window = _encoder_seconds(decoder.encode, features)
    rows = _rows_with_audio(decoder, decoder.encode(features))
    for batch in [b for b in (32, 64, 128, 256) if b <= rows]:
        decoder.tokens[:batch] = 1
        decoder.positions[:batch] = 60
        for _ in range(3):
            logits = decoder.step(batch, 100)
            logits.argmax(-1)
        torch.cuda.synchronize()
        start = time.perf_counter()
        steps = 50
        for i in range(steps):
            decoder.positions[:batch] = 4 + i * 2
            logits = decoder.step(batch, 4 + i * 2)
            decoder.tokens[:batch] = logits.argmax(-1)
        torch.cuda.synchronize()
        step = (time.perf_counter() - start) / steps
        decode = mean_tokens * step / batch
        timings[batch] = {
            "step_ms": step * 1000,
            "audio_s_per_s": WINDOW_SECONDS / (hf_per_window + decode),
            "audio_s_per_s_fused_encoder": WINDOW_SECONDS / (encoder_per_window + decode),
        }
    return {
        "encoder_ms_per_window": hf_per_window * 1000,
        "fused_encoder_ms_per_window": encoder_per_window * 1000,
        "by_rows": timings,
    }


def _rows_with_audio(decoder: Any, hidden: Any) -> int:
    """Give rows `0..n-1` windows' audio, each row a window of its own (greedy), from `hidden`
    repeated; returns `n`, the most rows that can: every row of a per-row cache, and in a
    pooled one as many rows as lie below their slots, taken from the top (`slots.py`)."""
    import torch

    from gpuscribe.workers.engines.batched.crossattn import window_table
    from gpuscribe.workers.engines.batched.slots import SlotAllocator

    rows = decoder.rows
    if decoder.layout is not None:
        slots = SlotAllocator(decoder.layout, decoder.batch_buckets)
        rows = slots.fill(1)
        taken = sorted(slots._taken, reverse=True)  # row r hears slot taken[r]
        index = torch.tensor(taken, device=hidden.device)
        table = window_table([[r] for r in range(rows)], decoder.rows, taken)
        decoder.set_windows(*(torch.from_numpy(t).to(hidden.device) for t in table))
    else:
        index = torch.arange(rows, device=hidden.device)
    decoder.fill_cross(index, hidden.repeat(math.ceil(rows / hidden.shape[0]), 1, 1)[:rows])
    return rows


def part_profile(model: Any, rows: int = 256) -> list[dict[str, Any]]:
    """Where one decode step's time goes: the step run eagerly (graphs off) under the
    profiler, kernels by total device time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    decoder = model.decoder
    features = torch.randn(64, model.backend.n_mels, 3000, device="cuda", dtype=decoder.dtype)
    rows = min(rows, _rows_with_audio(decoder, decoder.encode(features)))
    decoder.use_graphs = False
    decoder.tokens[:rows] = 1
    decoder.positions[:rows] = 60
    decoder.step(rows, 100)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            decoder.step(rows, 100)
        torch.cuda.synchronize()
    decoder.use_graphs = True
    table = []
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if device_us > 0:
            table.append({"name": event.key[:120], "ms_per_step": device_us / 5 / 1000,
                          "calls_per_step": event.count / 5})  # fmt: skip
    table.sort(key=lambda e: e["ms_per_step"], reverse=True)
    return table[:25]


def part_generate(model: Any, tokens: list[int], batches: tuple[int, ...]) -> dict[str, Any]:
    import torch

    hf = model._whisper
    n_mels = model.backend.n_mels
    results: dict[int, dict[str, Any]] = {}
    for batch in batches:
        try:
            results[batch] = _generate_at(hf, n_mels, tokens, batch)
        except torch.OutOfMemoryError as exc:  # a batch too large must not lose the others
            results[batch] = {"error": repr(exc)[:300]}
            torch.cuda.empty_cache()
    return results


def _generate_at(hf: Any, n_mels: int, tokens: list[int], batch: int) -> dict[str, Any]:
    """`generate` over the stream's first windows at `batch`, each batch run to its longest."""
    import torch

    windows = tokens[: max(batch * 2, 128)]
    with torch.inference_mode():
        warm = torch.randn(batch, n_mels, 3000, device="cuda", dtype=torch.float16)
        hf.generate(warm, min_new_tokens=4, max_new_tokens=4)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for first in range(0, len(windows), batch):
            group = windows[first : first + batch]
            features = torch.randn(len(group), n_mels, 3000, device="cuda", dtype=torch.float16)
            longest = max(group)
            hf.generate(features, min_new_tokens=longest, max_new_tokens=longest)
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"windows": len(windows), "audio_s_per_s": len(windows) * WINDOW_SECONDS / elapsed}


def part_engine(model: Any, lengths: list[float], threads: int, beam: int) -> dict[str, Any]:
    work: queue.Queue[float] = queue.Queue()
    for seconds in lengths:
        work.put(seconds)
    failures: list[str] = []
    options = TranscriptionOptions(engine="transformers", model="bench", beam_size=beam)

    def worker() -> None:
        while True:
            try:
                seconds = work.get_nowait()
            except queue.Empty:
                return
            audio = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
            try:
                model.transcribe(audio, options, lambda s, p: None, lambda: False)
            except Exception as exc:  # reported, not raised: one failure must not stop the run
                failures.append(repr(exc))

    steps_before = model.batcher.steps
    host_bound_before = model.batcher.host_bound_steps
    row_steps_before = model.batcher.row_steps
    seconds_before = dict(model.batcher.seconds)
    start = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "threads": threads,
        "beam": beam,
        "tasks": len(lengths),
        "audio_seconds": sum(lengths),
        "wall_seconds": elapsed,
        "audio_s_per_s": sum(lengths) / elapsed,
        "steps": model.batcher.steps - steps_before,
        "mean_rows_per_step": (model.batcher.row_steps - row_steps_before)
        / max(1, model.batcher.steps - steps_before),
        "host_bound_steps": model.batcher.host_bound_steps - host_bound_before,
        "batcher_seconds": {
            k: round(v - seconds_before[k], 3) for k, v in model.batcher.seconds.items()
        },
        "failures": failures[:5],
        "failure_count": len(failures),
    }


def merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """`intervals` (start, end) merged where they touch or overlap, in order."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length where two merged interval lists overlap."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def busy_summary(trace_events: list[dict[str, Any]]) -> dict[str, Any]:
    """Device time of a chrome trace's kernels and copies, by stream, in seconds."""
    by_stream: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, int] = {}
    for event in trace_events:
        if event.get("ph") != "X" or event.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        stream = str(event.get("args", {}).get("stream", event.get("tid")))
        start = float(event["ts"]) / 1e6
        by_stream.setdefault(stream, []).append((start, start + float(event["dur"]) / 1e6))
        counts[stream] = counts.get(stream, 0) + 1
    if not by_stream:
        return {"error": "no device events in the trace"}
    streams = {k: merged(v) for k, v in by_stream.items()}
    everything = merged([i for v in by_stream.values() for i in v])
    first, last = everything[0][0], everything[-1][1]
    busy = sum(e - s for s, e in everything)
    top = sorted(streams, key=lambda k: -sum(e - s for s, e in streams[k]))[:2]
    return {
        "span_s": last - first,
        "busy_s": busy,
        "idle_s": (last - first) - busy,
        "streams": {
            k: {"kernels": counts[k], "busy_s": sum(e - s for s, e in v)}
            for k, v in streams.items()
        },
        "two_busiest_overlap_s": overlap(streams[top[0]], streams[top[1]]) if len(top) == 2 else 0,
    }


def _arrange(model: Any, priority: int | None) -> None:
    """Decode-stream `priority` with the encoder overlapped, or (None) the encoder serial."""
    batcher = model.batcher
    if priority is None:
        batcher.call(lambda: batcher.set_overlap_encoder(False))
        return
    batcher.call(lambda: batcher.set_overlap_encoder(True))
    batcher.call(lambda: batcher.set_decode_priority(priority))


def part_timeline(
    model: Any, lengths: list[float], beam: int, priorities: list[int | None], out: Path
) -> dict[str, Any]:
    """The engine over `lengths` under the profiler, once per decode-stream priority."""
    from torch.profiler import ProfilerActivity, profile

    results = {}
    for priority in priorities:
        _arrange(model, priority)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run = part_engine(model, lengths, len(lengths), beam)
        path = out / "timeline.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
        path.unlink()
        results[str(priority)] = {"engine": run, "device": busy_summary(events)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="large-v3")
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--threads", default="5,64")
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--parts", default="engine,ceiling,profile,generate")
    parser.add_argument("--generate-batches", default="16,64,128")
    parser.add_argument(
        "--attention",
        default="auto",
        help="the engine's self-attention forms, comma-separated, each an engine run: auto "
        "(the fastest of every form that works, timed at load), plain (the fastest of "
        "PyTorch's: sdpa, bmm, kq), or one of sdpa, bmm, kq, ragged",
    )
    parser.add_argument("--longest", type=float, default=1200, help="longest task, seconds")
    parser.add_argument("--cpu", action="store_true", help="smoke run: --parts engine only")
    parser.add_argument("--timeline-tasks", type=int, default=60)
    parser.add_argument(
        "--lookaheads", default=str(LOOKAHEAD), help="steps queued ahead the engine tries"
    )
    parser.add_argument(
        "--grouped",
        default="on",
        help="on,off: steps with beam windows read each window's audio once (where the kernel "
        "passed its trial at load), and row by row",
    )
    parser.add_argument(
        "--layout",
        default="auto",
        help="the cache's layout: auto (pooled where Triton works), per-row, or pooled (one "
        "copy of a window's audio)",
    )
    parser.add_argument(
        "--priorities",
        default="-1,0",
        help="decode-stream priorities the timeline and engine try (serial: no side stream)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load(args.model, args.rows, args.cpu, args.layout)
    lengths = stream_lengths(args.tasks, longest=args.longest)
    tokens = window_tokens(model, lengths)
    report: dict[str, Any] = {
        "model": args.model,
        "rows": args.rows,
        "layout": args.layout,
        "step_rows": model.decoder.rows,
        "tasks": args.tasks,
        "windows": len(tokens),
        "mean_tokens": float(np.mean(tokens)),
        "audio_seconds": sum(lengths),
    }
    path = out / f"batching-{args.model}-beam{args.beam}-{args.layout}.json"

    def save(part: str, value: Any) -> None:  # after each part: a later failure loses nothing
        report[part] = value
        path.write_text(json.dumps(report, indent=2))
        print(part, json.dumps(value), flush=True)

    priorities = [None if p == "serial" else int(p) for p in args.priorities.split(",")]
    if "timeline" in parts:
        few = lengths[: args.timeline_tasks]
        save("timeline", part_timeline(model, few, args.beam, priorities, out))
    if "engine" in parts:
        runs = []
        grouped = model.decoder.grouped  # what the load chose: "kernel" or None
        captured = "auto"  # what the load captured
        for attention in args.attention.split(","):
            if attention != captured and not args.cpu:  # the CPU steps eagerly, with sdpa
                _set_attention(model, attention)
                captured = attention
            for priority in priorities:
                _arrange(model, priority)
                for lookahead in [int(k) for k in args.lookaheads.split(",")]:
                    model.batcher.lookahead = lookahead  # read by the batcher thread each step
                    for way in args.grouped.split(","):
                        model.decoder.grouped = grouped if way == "on" else None
                        for threads in args.threads.split(","):
                            run = part_engine(model, lengths, int(threads), args.beam)
                            runs.append({
                                "attention": attention,
                                "chosen": {b: k for (b, _), k in model.decoder.chosen.items()},
                                "decode_priority": priority, "lookahead": lookahead,
                                "grouped": model.decoder.grouped, **run,
                            })  # fmt: skip
                            save("engine", runs)
        _arrange(model, priorities[0])
        model.batcher.lookahead = LOOKAHEAD
        model.decoder.grouped = grouped

    def attempt(part: str, run: Any) -> None:  # one part failing must not lose the others
        try:
            save(part, run())
        except Exception as exc:
            save(part, {"error": repr(exc)})

    if "ceiling" in parts:  # after the engine: it replaces the engine's captured graphs
        attempt("ceiling", lambda: part_ceiling(model, report["mean_tokens"]))
    if "profile" in parts:
        attempt("profile", lambda: part_profile(model))
    if "generate" in parts:
        batches = tuple(int(b) for b in args.generate_batches.split(","))
        attempt("generate", lambda: part_generate(model, tokens, batches))


if __name__ == "__main__":
    main()
