"""On a real CUDA GPU: the token choice captured in a CUDA graph gives, step after step, exactly
what the same choice run eagerly gives (tokens, log-probabilities, no-speech probabilities, the
next step's inputs and the rule state). Run with `make test-gpu`."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gpuscribe.workers.engines.batched.choice import RowStates, forced_start
from gpuscribe.workers.engines.batched.search import DecodeOptions, Group, Row, Vocabulary

pytestmark = pytest.mark.gpu

V = Vocabulary(
    size=24, eot=10, sot=11, no_timestamps=14, no_speech=12, timestamp_begin=15,
    blank_ids=(0, 10), default_suppress=(3, 4),
)  # fmt: skip
ROWS = 8


def _states(torch: Any, graphs: bool) -> RowStates:
    decoder = SimpleNamespace(
        rows=ROWS,
        device=torch.device("cuda"),
        shape=SimpleNamespace(max_len=64),
        tokens=torch.zeros(ROWS, dtype=torch.long, device="cuda"),
        positions=torch.zeros(ROWS, dtype=torch.long, device="cuda"),
        logits=torch.zeros(ROWS, V.size, device="cuda"),
        batch_buckets=(4, ROWS),
        use_graphs=graphs,
    )
    return RowStates(torch, decoder, V)


PROMPTS = (  # timestamps on, default suppression; no timestamps; a prefilled head
    ([V.sot], (-1,)),
    ([V.sot, 5, V.no_timestamps], ()),
    ([1, V.sot], (7,)),
)


def _rows() -> list[Row]:
    rows = []
    for prompt, suppress in PROMPTS:
        options = DecodeOptions(beam_size=1, suppress_tokens=suppress)
        timestamps = prompt[-1] != V.no_timestamps
        group = Group(
            None, 0, prompt, options, timestamps, 20,
            sot_position=prompt.index(V.sot), forced_start=forced_start(prompt, V.sot),
        )  # fmt: skip
        row = Row(group, position=group.forced_start)
        group.rows.append(row)
        rows.append(row)
    return rows


def test_the_captured_choice_is_the_eager_choice() -> None:
    torch = pytest.importorskip("torch")
    captured, eager = _states(torch, graphs=True), _states(torch, graphs=False)
    for states in (captured, eager):
        states.start([0, 1, 2], _rows())
    captured.capture_all()
    buckets = {4, ROWS}  # each without and with what the beams' choice reads
    assert captured.use_graphs
    assert set(captured._graphs) == {(b, beams) for b in buckets for beams in (False, True)}
    generator = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(12):
        logits = torch.randn(ROWS, V.size, device="cuda", generator=generator)
        captured._logits.copy_(logits)  # the step's output buffer, as a step writes it
        one = captured.choose(captured._logits[:3], 3, sampling=False)
        two = eager.choose(logits[:3], 3, sampling=False)
        assert torch.equal(one.out, two.out)
        for name in ("state", "tokens", "positions", "no_speech"):
            assert torch.equal(getattr(captured, name)[:3], getattr(eager, name)[:3]), name
