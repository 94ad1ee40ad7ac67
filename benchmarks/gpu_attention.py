"""Forms of the decode step's cross-attention, timed alone on a GPU (one layer, one query per
sequence, float16): which reads the cached keys and values at the device's bandwidth.

  python3 benchmarks/gpu_attention.py --out OUT [--rows 256] [--heads 20]

The decode step of large-v3 at 256 rows reads 31 GB of cross-attention keys and as much of
values per step; a profile showed q.K^T reading at half the speed of weights.V. Forms:
  kq      K @ q^T        keys [rows, heads, frames, dim] (the cache's layout)
  bmm     q @ K^T        the same keys
  qkt     q @ Kt         keys stored transposed, [rows, heads, dim, frames]
  wv      weights @ V    (the second product, for comparison)
  sdpa    PyTorch's fused attention over the same keys and values (whole attention)
Each is reported in ms per layer and GB/s of cache read; JSON to OUT/attention.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def timed(torch: Any, run: Any, repeats: int = 20, warm_ups: int = 3) -> float:
    """Milliseconds per call of `run` on the device, after `warm_ups` calls."""
    for _ in range(warm_ups):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)) / repeats


def _under(kernel: Any, backend: Any, sdpa: Any, *args: Any) -> Any:
    with kernel(backend):
        return sdpa(*args)


def _graphed(torch: Any, kernel: Any, backend: Any, sdpa: Any, *args: Any) -> Any:
    """The attention under `backend` captured in a CUDA graph: its replay, or None."""
    try:
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                _under(kernel, backend, sdpa, *args)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                _under(kernel, backend, sdpa, *args)
        return graph.replay
    except Exception as exc:  # a backend that cannot serve these shapes, or cannot be captured
        print(backend, "capture failed:", repr(exc)[:300], flush=True)
        return None


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--frames", type=int, default=1500)
    args = parser.parse_args()
    r, h, d, f = args.rows, args.heads, args.dim, args.frames
    options = {"device": "cuda", "dtype": torch.float16}
    keys = torch.randn(r, h, f, d, **options)
    keys_t = keys.transpose(-1, -2).contiguous()
    values = torch.randn(r, h, f, d, **options)
    q = torch.randn(r, h, 1, d, **options)
    weights = torch.randn(r, h, 1, f, **options).softmax(-1)
    gigabytes = keys.numel() * keys.element_size() / 1e9
    forms = {
        "kq": lambda: keys @ q.transpose(-1, -2),
        "bmm": lambda: q @ keys.transpose(-1, -2),
        "qkt": lambda: q @ keys_t,
        "wv": lambda: weights @ values,
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, keys, values),
    }
    ref = (q @ keys.transpose(-1, -2)).float()
    agree = float(((q @ keys_t).float() - ref).abs().max())
    report: dict[str, Any] = {"rows": r, "heads": h, "dim": d, "frames": f, "qkt_max_diff": agree}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sdpa = torch.nn.functional.scaled_dot_product_attention
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    for name, backend in backends.items():
        forms[f"sdpa-{name}"] = lambda b=backend: _under(sdpa_kernel, b, sdpa, q, keys, values)
        forms[f"graph-sdpa-{name}"] = _graphed(torch, sdpa_kernel, backend, sdpa, q, keys, values)
    with torch.inference_mode():
        for name, run in forms.items():
            if run is None:
                report[name] = {"error": "capture failed"}
                continue
            try:
                ms = timed(torch, run)
            except Exception as exc:
                report[name] = {"error": repr(exc)[:300]}
                continue
            read = 2 * gigabytes if "sdpa" in name else gigabytes
            report[name] = {"ms": ms, "gb_per_s": read / (ms / 1000)}
            print(name, json.dumps(report[name]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
