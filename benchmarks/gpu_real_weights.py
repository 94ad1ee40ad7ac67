"""Real weights on the GPU: the bundled tiny.en through the batched transformers engine on CUDA
against the same engine on the CPU, in one process (run on a GPU machine, `PYTHONPATH=src`):

  python3 benchmarks/gpu_real_weights.py --out OUT [--copies 16]

For every shipped speech clip: the CPU transcript; the CUDA transcript of the clip alone; and
the CUDA transcript while `copies` copies of every clip run at once from threads (a full batch).
Word error rates against the spoken text and between the runs go to OUT/real-weights.json.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from pathlib import Path
from typing import Any

from gpuscribe.bench.speech import continuous_speech, samples, speech_clips
from gpuscribe.domain import TranscriptionOptions
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.engines.transformers_engine import TransformersEngine
from gpuscribe.workers.messages import DeviceRef


def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower().replace("'", "")).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate by edit distance over words (no dependency on jiwer)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def transcribe(model: Any, audio: Any, beam: int) -> Any:
    options = TranscriptionOptions(engine="transformers", model="tiny.en", beam_size=beam)
    return model.transcribe(audio, options, lambda s, p: None, lambda: False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--copies", type=int, default=16)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--models-dir", default="")
    parser.add_argument("--layout", default="auto", help="the cache: auto, per-row or pooled")
    args = parser.parse_args()
    engine = TransformersEngine(models_dir=args.models_dir, batch_layout=args.layout)
    cpu = engine.load("tiny.en", DeviceRef(DeviceKind.CPU, "cpu", 0, "cpu"), "default")
    cuda = engine.load("tiny.en", DeviceRef(DeviceKind.CUDA, "gpu", 0, "gpu"), "float16")
    clips = [(c.path.name, c.text, samples(c.path)) for c in speech_clips()]
    long = continuous_speech()
    clips.append((long.path.name, long.text, samples(long.path)))
    results: dict[str, dict[str, Any]] = {}
    for name, _, audio in clips:
        results[name] = {
            "cpu": transcribe(cpu, audio, args.beam).text,
            "cuda_alone": transcribe(cuda, audio, args.beam).text,
        }
    batched: dict[str, list[str]] = {name: [] for name, _, _ in clips}

    def run(name: str, audio: Any) -> None:
        batched[name].append(transcribe(cuda, audio, args.beam).text)

    threads = [
        threading.Thread(target=run, args=(name, audio))
        for _ in range(args.copies)
        for name, _, audio in clips
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = []
    for name, text, _ in clips:
        r = results[name]
        full = batched[name]
        report.append({
            "clip": name,
            "wer_cpu": wer(text, r["cpu"]),
            "wer_cuda_alone": wer(text, r["cuda_alone"]),
            "wer_cuda_alone_vs_cpu": wer(r["cpu"], r["cuda_alone"]),
            "wer_cuda_batched_vs_cpu_max": max(wer(r["cpu"], t) for t in full),
            "identical_batched": sum(t == r["cuda_alone"] for t in full),
            "copies": len(full),
            "cpu_text": r["cpu"],
            "cuda_text": r["cuda_alone"],
        })  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real-weights.json").write_text(json.dumps(report, indent=1))
    for row in report:
        print({k: v for k, v in row.items() if not k.endswith("_text")})


if __name__ == "__main__":
    main()
