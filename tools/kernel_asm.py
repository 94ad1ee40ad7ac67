"""Compile the batched engine's Triton kernels for a GPU architecture on a machine without one,
and report what each compiled into: its global loads, stores and asynchronous copies by width,
shared memory, and whether it compiled at all.

Triton's interpreter (what the unit tests run kernels in on the CPU) executes a kernel's Python
with numpy and forgives what the compiler refuses (a loop-carried value that changes type, say);
and a kernel whose loads compile into 2-byte loads instead of 16-byte ones runs several times
slower without failing anything. Compiling for the real target here catches both before a GPU
session. The arguments are specialized as a large-v3 launch specializes them (pointers aligned
to 16 bytes, integers marked where they are multiples of 16, as Triton's launcher does).

    .venv/bin/python tools/kernel_asm.py [--arch 90]    prints JSON, one entry a kernel

Needs Triton (`pip install triton`); TRITON_INTERPRET must be unset (this script unsets it).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # before Triton is imported: compile, not interpret
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ALIGNED = [["tt.divisibility", 16]]


@dataclass(frozen=True)
class Kernel:
    """A kernel as a large-v3 launch specializes it: argument types, constexprs, and the
    integer arguments that are multiples of 16 there (pointers always are aligned)."""

    module: str
    name: str  # the kernel's name in its module's launcher
    types: dict[str, str]
    constexprs: dict[str, int]
    multiples: frozenset[str]


POINTERS = {"q": "*fp16", "k": "*fp16", "v": "*fp16", "out": "*fp16"}
KERNELS = {
    "crossattn": Kernel(
        "crossattn",
        "grouped",
        {**POINTERS, "leaders": "*i32", "members": "*i32", "frames": "i32", "heads": "i32",
         "scale": "fp32"},
        {"head_dim": 64, "group": 16, "block": 64},
        frozenset(),
    ),
    "rowcopy": Kernel(
        "rowcopy",
        "copy_rows",
        {"cache": "*fp16", "sources": "*i64", "targets": "*i64", "lengths": "*i64",
         "layer_stride": "i32", "heads": "i32", "max_len": "i32", "head_dim": "i32"},
        {"block": 1024},
        frozenset({"layer_stride", "max_len", "head_dim"}),
    ),
    "selfattn": Kernel(
        "selfattn",
        "ragged",
        {**POINTERS, "positions": "*i64", "length": "i32", "q_row": "i32", "q_head": "i32",
         "k_row": "i32", "k_head": "i32", "scale": "fp32"},
        {"head_dim": 64, "block": 64},
        frozenset({"length", "q_row", "q_head", "k_row", "k_head"}),
    ),
}  # fmt: skip


def _jit_function(module_name: str, name: str) -> Any:
    """The kernel behind a module's launcher (`_kernel()` or `_triton_kernel()`)."""
    import importlib

    module = importlib.import_module(f"gpuscribe.workers.engines.batched.{module_name}")
    factory = getattr(module, "_kernel", None) or module._triton_kernel
    launcher = factory()
    if launcher is None:
        raise RuntimeError("Triton is not available")
    return inspect.getclosurevars(launcher).nonlocals[name]


def compile_kernel(key: str, arch: int) -> dict[str, Any]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = KERNELS[key]
    function = _jit_function(kernel.module, kernel.name)
    signature = {**kernel.types, **dict.fromkeys(kernel.constexprs, "constexpr")}
    order = list(function.arg_names)
    attrs = {
        (order.index(arg),): ALIGNED
        for arg, kind in kernel.types.items()
        if kind.startswith("*") or arg in kernel.multiples
    }
    source = ASTSource(fn=function, signature=signature, constexprs=kernel.constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    ptx = compiled.asm["ptx"]
    return {
        "loads": dict(collections.Counter(re.findall(r"ld\.global[.\w]*", ptx))),
        "stores": dict(collections.Counter(re.findall(r"st\.global[.\w]*", ptx))),
        "async_copies": dict(collections.Counter(re.findall(r"cp\.async\.[a-z]+[.\w]*", ptx))),
        "shared_bytes": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, as 90")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    args = parser.parse_args()
    report = {}
    for key in args.kernels.split(","):
        try:
            report[key] = compile_kernel(key, args.arch)
        except Exception as exc:  # a kernel that does not compile is the finding
            report[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
