"""batched/selfattn.py: each row attending to its own positions only (through the Triton kernel,
in Triton's interpreter where Triton is installed) gives what PyTorch's masked attention over
the step's length gives, for the strided queries and caches a step hands it; the positions a
decoder times the forms at are spread over every bucket's rows."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from gpuscribe.workers.engines.batched import selfattn
from gpuscribe.workers.engines.batched.decoder import spread_positions

torch = pytest.importorskip("torch")

HEADS, HEAD_DIM, MAX_LEN = 3, 16, 130


def _triton_interpreter() -> None:
    """Triton's kernels run on CPU tensors in its interpreter (`conftest.py`); skips where
    Triton is not installed, as in CI."""
    pytest.importorskip("triton")
    if selfattn._kernel() is None:
        pytest.skip("Triton cannot be used here")


def _queries(n: int, generator: Any) -> Any:
    """Queries as a step makes them: a view of the fused query/key/value product."""
    fused = torch.randn(n, 1, 3 * HEADS * HEAD_DIM, generator=generator)
    return fused[..., : HEADS * HEAD_DIM].view(n, 1, HEADS, HEAD_DIM).transpose(1, 2)


def test_the_masked_form_reads_positions_up_to_each_rows_own() -> None:
    """Changing what lies past a row's position (or past the length) changes nothing."""
    generator = torch.Generator().manual_seed(0)
    q = _queries(3, generator)
    keys, values = (torch.randn(3, HEADS, MAX_LEN, HEAD_DIM, generator=generator) for _ in "kv")
    positions = torch.tensor([0, 50, 129])
    before = selfattn.attend_masked(torch, q, keys, values, positions, 100)
    keys[0, :, 1:], values[1, :, 51:], keys[2, :, 100:] = 9.0, 9.0, 9.0
    assert torch.equal(selfattn.attend_masked(torch, q, keys, values, positions, 100), before)


@pytest.mark.parametrize("pooled", [False, True], ids=["per-row", "pooled"])
def test_the_kernel_attends_as_the_masked_form(pooled: bool) -> None:
    """Rows at positions in and past the first block, at the length's end and past it; a
    pooled cache's layer view, whose layers lie further apart than its rows; a step's bucket
    of rows inside a larger cache."""
    _triton_interpreter()
    assert selfattn.triton_works("cpu")  # the trial a CUDA device gets at load
    generator = torch.Generator().manual_seed(1)
    rows = 9
    shape = (2, rows, HEADS, MAX_LEN, HEAD_DIM)  # layers first, as the decoder's caches
    elements = rows * HEADS * MAX_LEN * HEAD_DIM
    if pooled:  # each layer's rows, then 100 elements of its slots
        pools = [torch.randn(2, elements + 100, generator=generator) for _ in "kv"]
        keys, values = (pool[:, :elements].view(shape)[1] for pool in pools)
    else:
        keys, values = (torch.randn(shape, generator=generator)[1] for _ in "kv")
    positions = torch.tensor([0, 1, 63, 64, 65, 127, 129, 20, 7])
    q = _queries(8, generator)  # a step of 8 rows of the 9
    for length in (130, 128, 64):
        out = torch.full((8, HEADS, 1, HEAD_DIM), 7.0)
        selfattn.attend(q, keys, values, positions, length, out)
        expected = selfattn.attend_masked(torch, q, keys, values, positions, length)
        assert torch.allclose(out, expected, atol=1e-5), length


def test_the_launcher_refuses_layouts_it_would_misread() -> None:
    _triton_interpreter()
    q = torch.randn(2, HEADS, 1, HEAD_DIM)
    keys = torch.randn(2, HEADS, MAX_LEN, HEAD_DIM)
    out = torch.zeros_like(q)
    positions = torch.tensor([3, 4])
    with pytest.raises(ValueError, match="share a layout"):
        selfattn.attend(q, keys, keys.transpose(2, 3).contiguous().transpose(2, 3), positions,
                        8, out)  # fmt: skip
    for wrong in (torch.zeros(2, 1, HEAD_DIM, HEADS).permute(0, 3, 1, 2), out[:1]):
        with pytest.raises(ValueError, match="the output contiguous"):
            selfattn.attend(q, keys, keys, positions, 8, wrong)


def test_timing_positions_spread_every_buckets_rows() -> None:
    """The first rows of any bucket lie over the whole length (mean about half), never past
    it: a step's form is timed at load over rows at every stage, as a busy batch holds them."""
    positions = spread_positions(435, 448)
    assert positions[:3] == [224, 112, 336]
    assert min(positions) >= 0 and max(positions) <= 447
    for bucket in (1, 2, 8, 32, 160, 435):
        first = positions[:bucket]
        assert abs(statistics.mean(first) - 224) <= max(448 / bucket, 5), bucket
    assert len(set(positions[:32])) == 32
