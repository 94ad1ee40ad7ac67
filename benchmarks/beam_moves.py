"""How many beam rows copy their cache each step: the bundled tiny.en (real weights) on the
CPU, every shipped speech clip at 5 beams. Prints the rows moved out of the beam rows chosen
for (the batcher's `beam_rows_moved` and `beam_rows_chosen`, counted as the host replays the
device's choices), and a hash of the
transcripts (a change in where beams sit must not change them).

  PYTHONPATH=src python3 benchmarks/beam_moves.py

On a GPU each moved row copies its self-attention keys and values up to the step's position
(large-v3: 164 KB a position); this counts them where no GPU is at hand.
"""

from __future__ import annotations

import hashlib

from gpuscribe.bench.speech import continuous_speech, samples, speech_clips
from gpuscribe.domain import TranscriptionOptions
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.engines.transformers_engine import TransformersEngine
from gpuscribe.workers.messages import DeviceRef


def main() -> None:
    engine = TransformersEngine()
    model = engine.load("tiny.en", DeviceRef(DeviceKind.CPU, "cpu", 0, "cpu"), "default")
    options = TranscriptionOptions(engine="transformers", model="tiny.en", beam_size=5)
    texts = []
    for path in [c.path for c in speech_clips()] + [continuous_speech().path]:
        t = model.transcribe(samples(path), options, lambda s, p: None, lambda: False)
        texts.append(t.text)
    moved, chosen = model.batcher.beam_rows_moved, model.batcher.beam_rows_chosen
    model.unload()
    print(f"moved {moved} of {chosen} beam rows chosen ({moved / max(1, chosen):.1%})")
    print("transcripts", hashlib.md5("\n".join(texts).encode()).hexdigest()[:12])


if __name__ == "__main__":
    main()
