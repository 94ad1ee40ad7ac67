"""batched/beams.py on the CPU: the device's beam choice makes the decisions of the host's beam
search (survivors, finished hypotheses, a window's end, each survivor's row), and the host's
replay of its record rebuilds the same hypotheses."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from gpuscribe.workers.engines.batched.beams import (
    BeamLayout,
    choose,
    in_place,
    in_place_slots,
    replay,
)
from gpuscribe.workers.engines.batched.choice import BEAM_COLUMNS, COLUMNS
from gpuscribe.workers.engines.batched.search import DecodeOptions, Group, Row

torch = pytest.importorskip("torch")

EOT, TS_BEGIN, VOCAB = 5, 20, 30
C = BEAM_COLUMNS


def test_a_surviving_beam_stays_in_its_parents_row() -> None:
    """Survivors come best first as (score, parent, token); each keeps its parent's row unless
    a better survivor of the same parent took it, and the rest fill the free rows in order."""
    rows: list[Any] = [object(), object(), object()]
    # Parents 2, 0, 1 in score order: every survivor continues its own row, none moves.
    survivors = [(-1.0, 2, 7), (-2.0, 0, 8), (-3.0, 1, 9)]
    assert in_place(rows, rows, survivors) == [survivors[1], survivors[2], survivors[0]]
    # Two continuations of row 1: the better stays there, the other takes the first free row.
    survivors = [(-1.0, 1, 7), (-2.0, 1, 8), (-3.0, 2, 9)]
    assert in_place(rows, rows, survivors) == [survivors[1], survivors[0], survivors[2]]
    # The first step: every survivor continues row 0 (the only source), in score order.
    survivors = [(-1.0, 0, 7), (-2.0, 0, 8), (-3.0, 0, 9)]
    assert in_place(rows, rows[:1], survivors) == survivors


@pytest.mark.parametrize("beam", [2, 3, 5])
def test_the_devices_rows_for_survivors_are_the_hosts(beam: int) -> None:
    """`in_place_slots` (every window at once, on the device) places survivors where
    `in_place` does, over every assignment of parents for small beams."""
    rows: list[Any] = [object() for _ in range(beam)]
    cases = list(itertools.product(range(beam), repeat=beam))
    parents = torch.tensor(cases)
    slots = in_place_slots(torch, parents)
    for case, slot in zip(cases, slots.tolist(), strict=True):
        survivors = [(-float(k), parent, k) for k, parent in enumerate(case)]
        placed = in_place(rows, rows, survivors)
        assert [placed[s] for s in slot] == survivors


def _window(beam: int, max_new: int, candidates: int | None = None) -> Group:
    options = DecodeOptions(beam_size=beam, patience=(candidates or beam) / beam)
    group = Group(None, 0, [1], options, False, max_new, sot_position=0, forced_start=0)
    group.rows = [Row(group) for _ in range(beam)]
    return group


def _host_step(group: Group, lp: list[list[float]], ids: list[list[int]]) -> bool:
    """The host's beam search as it was before the device chose (one window, one step): every
    candidate scored, stable-sorted, ends finishing hypotheses until `beam` survive; False
    when the window ends."""
    rows, beam = group.rows, group.options.beam_size
    sources = rows[:1] if not rows[0].tokens else rows
    candidates = [
        (row.logprob + lp[p][k], p, ids[p][k])
        for p, row in enumerate(sources)
        for k in range(len(ids[p]))
    ]
    candidates.sort(key=lambda c: c[0], reverse=True)
    survivors = []
    for score, parent, token in candidates:
        if token == EOT:
            if len(group.finished) < group.max_candidates:
                group.finish(sources[parent].tokens, score)
        else:
            survivors.append((score, parent, token))
        if len(survivors) >= beam:
            break
    at_limit = len(rows[0].tokens) + 1 >= group.max_new_tokens
    if len(group.finished) >= group.max_candidates or at_limit:
        if at_limit:
            for score, parent, token in survivors:
                group.finish([*sources[parent].tokens, token], score)
        return False
    old = [(list(s.tokens), s.logprob) for s in sources]
    for row, (score, parent, token) in zip(rows, in_place(rows, sources, survivors), strict=True):
        row.tokens, row.logprob = [*old[parent][0], token], score
    return True


def _top(
    rng: random.Random, beam: int, end_often: bool
) -> tuple[list[list[float]], list[list[int]]]:
    """Each beam's best `2 x beam` continuations: distinct tokens, log-probabilities best
    first, the end token among them often when `end_often`."""
    lp, ids = [], []
    for _ in range(beam):
        tokens = rng.sample(range(VOCAB), 2 * beam)
        if end_often and EOT not in tokens and rng.random() < 0.5:
            tokens[rng.randrange(2 * beam)] = EOT
        values = sorted((-rng.expovariate(1.0) * 3 for _ in tokens), reverse=True)
        lp.append(values)
        ids.append(tokens)
    return lp, ids


@pytest.mark.parametrize("seed", range(6))
def test_the_device_chooses_and_the_host_replays_what_the_host_chose(seed: int) -> None:
    """Windows of 3 beams (one with patience 2, one short) decode from random candidates
    three ways: the host's old search, and the device's choice with the host replaying its
    record. Hypotheses, scores and ends agree at every step, and the device's rule state
    follows each row's hypothesis."""
    rng = random.Random(seed)
    beam, windows = 3, 3
    limits = [(9, None), (6, 6), (3, None)]
    reference = [_window(beam, m, c) for m, c in limits]
    replayed = [_window(beam, m, c) for m, c in limits]
    state = torch.zeros(beam * windows, COLUMNS, dtype=torch.long)
    for w, (max_new, candidates) in enumerate(limits):
        state[w * beam : (w + 1) * beam, C.max_new] = max_new
        state[w * beam : (w + 1) * beam, C.prompt_end] = 1
        state[w * beam : (w + 1) * beam, C.candidates] = candidates or beam
    # Rows of each window interleaved and out of order: the layout is what says where they are.
    placement = torch.randperm(beam * windows, generator=torch.Generator().manual_seed(seed))
    index = placement.view(windows, beam)
    state = state[placement.argsort()]
    positions = torch.zeros(beam * windows, dtype=torch.long)
    live = [True] * windows
    for _ in range(10):
        if not any(live):
            break
        top_lp = torch.full((beam * windows, 2 * beam + 1), -1e9)
        top_id = torch.zeros(beam * windows, 2 * beam + 1, dtype=torch.long)
        steps = []
        for w in range(windows):
            lp, ids = _top(rng, beam, end_often=True)
            steps.append((lp, ids))
            for b in range(beam):
                top_lp[index[w, b], : 2 * beam] = torch.tensor(lp[b])
                top_id[index[w, b], : 2 * beam] = torch.tensor(ids[b])
        layout = BeamLayout(beam, replayed, index, [0] * windows)
        record = choose_step(top_lp, top_id, state, positions, layout)
        for w in range(windows):
            if not live[w]:
                continue
            live[w] = _host_step(reference[w], *steps[w])
            assert (replay(replayed[w], record[w].tolist(), EOT, TS_BEGIN) >= 0) == live[w]
            assert bool(state[index[w, 0], C.ended]) == (not live[w])
            _assert_same(reference[w], replayed[w])
            if live[w]:
                _assert_state_follows(state, index[w].tolist(), replayed[w])
        positions += 1
    assert not any(live)


def choose_step(top_lp: Any, top_id: Any, state: Any, positions: Any, layout: BeamLayout) -> Any:
    """`beams.choose`, then its writes applied as `RowStates` applies them; the record."""
    record, writes = choose(torch, top_lp, top_id, state, positions, layout, C, EOT, TS_BEGIN)
    kept = state.index_select(0, writes.rows)
    state.index_copy_(0, writes.rows, torch.where(writes.active[:, None], writes.state, kept))
    return record


def _assert_state_follows(state: Any, rows: list[int], group: Group) -> None:
    """Each beam row's rule state and score on the device are its hypothesis's."""
    scores = state[:, C.score].contiguous().view(torch.float64)
    for row, beam in zip(rows, group.rows, strict=True):
        assert int(state[row, C.count]) == len(beam.tokens)
        assert int(state[row, C.last]) == beam.tokens[-1]
        previous = beam.tokens[-2] if len(beam.tokens) > 1 else 0
        assert int(state[row, C.penultimate]) == previous
        assert float(scores[row]) == beam.logprob


def _assert_same(reference: Group, replayed: Group) -> None:
    assert [h.tokens for h in replayed.finished] == [h.tokens for h in reference.finished]
    assert [h.score for h in replayed.finished] == pytest.approx(
        [h.score for h in reference.finished]
    )
    if not replayed.finished or len(replayed.finished) < replayed.max_candidates:
        assert [r.tokens for r in replayed.rows] == [r.tokens for r in reference.rows]
        assert [r.logprob for r in replayed.rows] == pytest.approx(
            [r.logprob for r in reference.rows]
        )
