"""The encoder alone on a GPU (random weights, benchmark only): milliseconds per 30 s window of
Hugging Face's module and of the engine's fused encoder with each attention backend, and where
the fused encoder's device time goes. Run with `PYTHONPATH=src`:

  python3 benchmarks/gpu_encoder.py --out OUT [--model large-v3] [--batches 32,64]

The encoder is most of the batch's work for large-v3-turbo (three quarters of its device time):
  hf       Hugging Face's `WhisperEncoder` (the issue's ceiling uses it)
  flash    the fused encoder, attention through PyTorch's choice with cuDNN's switched off
           (the worker's process-wide setting): the flash kernel
  cudnn    the fused encoder calling cuDNN's attention by name (the worker's encoder)
Each output is compared with Hugging Face's (largest absolute difference), with the process
set up as a worker sets it. JSON goes to OUT/encoder-MODEL.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gpu_attention import timed  # this folder, run as a script

from gpuscribe.memory.architectures import ARCHITECTURES
from gpuscribe.workers.engines.batched.encoder import FusedEncoder
from gpuscribe.workers.engines.transformers_engine import _build_random, _Target

ENCODER_REPEATS = 6  # an encoder batch of 64 windows takes about 0.3 s


def _ms(torch: Any, run: Any) -> float:
    """Milliseconds per call of `run` (an encoder batch), after two warm-up calls."""
    return timed(torch, run, ENCODER_REPEATS, warm_ups=2)


def kernel_classes(torch: Any, run: Any) -> dict[str, float]:
    """Device milliseconds of one call of `run`, by kind of kernel."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    classes: dict[str, float] = {}
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if us <= 0:
            continue
        name = event.key.lower()
        kind = (
            "attention" if any(k in name for k in ("flash", "sdpa", "fmha", "attention", "cudnn"))
            else "matmul" if any(k in name for k in ("gemm", "nvjet", "cutlass", "sm90", "conv"))
            else "elementwise"
        )  # fmt: skip
        classes[kind] = classes.get(kind, 0.0) + us / 1000
        classes[f"{kind}: {event.key[:90]} x{event.count}"] = us / 1000
    return classes


def main() -> None:
    import torch

    from gpuscribe.workers.engines.transformers_engine import _configure_cuda

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="large-v3")
    parser.add_argument("--batches", default="32,64")
    args = parser.parse_args()
    whisper = _build_random(ARCHITECTURES[args.model], _Target(torch.device("cuda"), torch.float16))
    whisper.eval()
    _configure_cuda(torch)
    hf = whisper.model.encoder
    fused = FusedEncoder(hf)
    report: dict[str, Any] = {"model": args.model, "by_batch": {}}
    n_mels = whisper.config.num_mel_bins
    for batch in [int(b) for b in args.batches.split(",")]:
        features = torch.randn(batch, n_mels, 3000, device="cuda", dtype=torch.float16)
        row: dict[str, Any] = {}
        with torch.inference_mode():
            row["hf_ms_per_window"] = _ms(torch, lambda f=features: hf(f)) / batch
            reference = hf(features).last_hidden_state
            for name in ("flash", "cudnn"):
                fused.cudnn_attention = name == "cudnn"
                out = fused(features)
                ms = _ms(torch, lambda f=features: fused(f)) / batch
                row[name] = {
                    "ms_per_window": ms,
                    "cudnn_still_on": fused.cudnn_attention,  # False: it failed, flash ran
                    "max_abs_diff_from_hf": float((out.float() - reference.float()).abs().max()),
                    "ms_per_batch_by_kernel": kernel_classes(torch, lambda f=features: fused(f)),
                }
        report["by_batch"][str(batch)] = row
        print(batch, json.dumps(row), flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"encoder-{args.model}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
