"""The batched engine's Triton kernels compile for an H100/H200 (sm_90) on this machine, with no
GPU (`tools/kernel_asm.py`), and read the cache 16 bytes at a time: Triton's interpreter, which
runs them in the other tests, forgives what the compiler refuses, and a kernel compiled into
2-byte loads fails nothing while running several times slower. Skips where Triton is not
installed (as in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "kernel_asm.py"


@pytest.fixture(scope="module")
def compiled() -> dict[str, Any]:
    pytest.importorskip("triton")
    done = subprocess.run(
        [sys.executable, str(TOOL), "--arch", "90"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("kernel", ["crossattn", "rowcopy", "selfattn"])
def test_the_kernel_compiles_into_wide_reads(compiled: dict[str, Any], kernel: str) -> None:
    result = compiled[kernel]
    assert "error" not in result, result.get("error")
    narrow = [op for op in result["loads"] if op.endswith((".b16", ".u16", ".b8"))]
    assert not narrow, result["loads"]
    wide_loads = result["loads"].get("ld.global.v4.b32", 0)
    wide_copies = result["async_copies"].get("cp.async.cg.shared.global", 0)
    assert wide_loads + wide_copies > 0, result
