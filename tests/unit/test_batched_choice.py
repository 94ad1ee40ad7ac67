"""batched/choice.py on the CPU, over a small vocabulary: a row inside its prompt is fed its
next prompt token and keeps its rule state; the step after its last prompt token picks under
Whisper's rules and advances the state; the no-speech probability comes from the step that fed
<|startoftranscript|>; the next step's inputs are written in place; rows move whole; a beam
window's choice is made beside greedy rows and written into its rows."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from gpuscribe.workers.engines.batched.beams import BeamLayout, BeamWrites
from gpuscribe.workers.engines.batched.choice import (
    CAPTURED_BEAM,
    COLUMNS,
    COUNT,
    FORCED_TOKENS,
    LAST,
    LAST_TIMESTAMP,
    OUT_LOGPROB,
    OUT_NO_SPEECH,
    OUT_TOKEN,
    PENULTIMATE,
    SCORE,
    SUPPRESS,
    SUPPRESS_SETS,
    RowStates,
    forced_start,
    row_generates,
)
from gpuscribe.workers.engines.batched.search import DecodeOptions, Group, Row, Vocabulary

torch = pytest.importorskip("torch")

# Text 0-9, the specials, then 8 timestamps (16-23), as in test_batched_search.py.
V = Vocabulary(
    size=24, eot=10, sot=11, no_timestamps=14, no_speech=12, timestamp_begin=15,
    blank_ids=(0, 10), default_suppress=(3, 4),
)  # fmt: skip
GREEDY = DecodeOptions(beam_size=1, suppress_tokens=())
ROWS = 4


def _states(rows: int = ROWS) -> RowStates:
    decoder = SimpleNamespace(
        rows=rows,
        device=torch.device("cpu"),
        shape=SimpleNamespace(max_len=32),
        tokens=torch.zeros(rows, dtype=torch.long),
        positions=torch.zeros(rows, dtype=torch.long),
        logits=torch.zeros(rows, V.size),
        batch_buckets=(rows,),
        use_graphs=False,
    )
    return RowStates(torch, decoder, V)


def _row(prompt: list[int], options: DecodeOptions = GREEDY, max_new: int = 8) -> Row:
    timestamps = prompt[-1] != V.no_timestamps
    group = Group(
        None, 0, prompt, options, timestamps, max_new,
        sot_position=prompt.index(V.sot), forced_start=forced_start(prompt, V.sot),
    )  # fmt: skip
    row = Row(group, position=group.forced_start)
    group.rows.append(row)
    return row


def _logits(best: int, n: int = 1, seed: int = 0) -> Any:
    logits = torch.randn(n, V.size, generator=torch.Generator().manual_seed(seed))
    logits[:, best] = 10.0
    return logits


def test_the_fed_part_of_a_prompt_starts_at_sot_and_holds_at_most_the_forced_tokens() -> None:
    assert forced_start([V.sot, 5, V.no_timestamps], V.sot) == 0
    assert forced_start([1, 2, 3, V.sot, 5], V.sot) == 3  # previous text is prefilled
    long_prefix = [V.sot, *range(1, 10), V.no_timestamps]
    assert forced_start(long_prefix, V.sot) == len(long_prefix) - FORCED_TOKENS


def test_a_prompt_is_fed_then_the_rules_pick() -> None:
    states = _states()
    row = _row([V.sot, 5, V.no_timestamps])
    states.start([0], [row])
    assert states.tokens[0] == V.sot and states.positions[0] == 0
    fed = []
    for step in range(2):  # the steps that feed <|sot|> and 5 choose nothing
        logits = _logits(best=7, seed=step)
        choice = states.choose(logits, 1, sampling=False)
        fed.append(int(states.tokens[0]))
        assert not row_generates(row, step)
        if step == 0:
            expected = float(logits[0].softmax(-1)[V.no_speech])
            assert float(choice.out[0, OUT_NO_SPEECH]) == pytest.approx(expected, rel=1e-5)
    assert fed == [5, V.no_timestamps]
    assert int(states.state[0, COUNT]) == 0 and int(states.state[0, LAST]) == -1
    logits = _logits(best=7, seed=5)
    choice = states.choose(logits, 1, sampling=False)  # after the last prompt token
    assert row_generates(row, 2)
    assert int(choice.out[0, OUT_TOKEN]) == 7 and int(states.tokens[0]) == 7
    allowed = logits[0].clone()
    allowed[list(V.blank_ids)] = -torch.inf  # the first pick: no blank, no immediate end
    assert float(choice.out[0, OUT_LOGPROB]) == pytest.approx(float(allowed.log_softmax(-1)[7]))
    assert int(states.positions[0]) == 3
    assert int(states.state[0, COUNT]) == 1 and int(states.state[0, LAST]) == 7
    # The no-speech probability stays the one of the <|sot|> step.
    assert float(choice.out[0, OUT_NO_SPEECH]) != pytest.approx(
        float(logits[0].softmax(-1)[V.no_speech])
    )


def test_the_first_pick_follows_the_rules_and_timestamps_are_remembered() -> None:
    states = _states()
    row = _row([V.sot])  # timestamps on: the first token must be a timestamp
    states.start([0], [row])
    choice = states.choose(_logits(best=7), 1, sampling=False)
    first = int(choice.out[0, OUT_TOKEN])
    assert first >= V.timestamp_begin
    assert int(states.state[0, LAST_TIMESTAMP]) == first
    choice = states.choose(_logits(best=7, seed=1), 1, sampling=False)
    assert int(states.state[0, PENULTIMATE]) == first
    assert int(states.state[0, LAST]) == int(choice.out[0, OUT_TOKEN])


def test_blank_is_suppressed_at_the_first_pick_only() -> None:
    states = _states()
    row = _row([V.sot, V.no_timestamps], DecodeOptions(beam_size=1, suppress_tokens=()))
    states.start([0], [row])
    states.choose(_logits(best=2), 1, sampling=False)  # feeds <|notimestamps|>
    assert int(states.choose(_logits(best=0), 1, sampling=False).out[0, 0]) != 0
    assert int(states.choose(_logits(best=0), 1, sampling=False).out[0, 0]) == 0


def test_sampling_rows_draw_allowed_tokens() -> None:
    states = _states()
    sampled = _row([V.sot, V.no_timestamps], DecodeOptions(beam_size=1, sampling_topk=0,
                                                           suppress_tokens=(-1,)))  # fmt: skip
    greedy = _row([V.sot, V.no_timestamps])
    states.start([0, 1], [sampled, greedy])
    states.choose(_logits(best=5, n=2), 2, sampling=True)
    flat = torch.zeros(2, V.size)  # every token equally likely
    drawn = set()
    for _ in range(40):
        states.state[:2, COUNT] = 1  # past the first pick (no blank rule)
        choice = states.choose(flat.clone(), 2, sampling=True)
        drawn.add(int(choice.out[0, OUT_TOKEN]))
    assert len(drawn) > 1 and not drawn & {3, 4}  # sampled, never a suppressed token


def test_rows_move_whole() -> None:
    states = _states()
    rows = [_row([V.sot, 5, V.no_timestamps]), _row([1, 2, V.sot, 6])]
    states.start([0, 3], rows)
    before = states.state[3].clone(), states.forced[3].clone(), int(states.positions[3])
    states.move(torch.tensor([3]), torch.tensor([1]))
    assert torch.equal(states.state[1], before[0]) and torch.equal(states.forced[1], before[1])
    assert int(states.positions[1]) == before[2] == 2 and int(states.tokens[1]) == V.sot


def test_choosing_over_a_whole_bucket_leaves_the_batch_rows_choice_alone() -> None:
    """A captured choice runs over its whole row bucket: whatever the free rows past the batch
    hold, the batch's rows get the choice they get alone."""
    alone, bucket = _states(), _states(rows=8)
    for states in (alone, bucket):
        states.start([0, 1], [_row([V.sot, 5, V.no_timestamps]), _row([V.sot])])
    junk = torch.Generator().manual_seed(3)
    bucket.state[2:] = torch.randint(-1, 30, (6, bucket.state.shape[1]), generator=junk)
    bucket.state[2:, SUPPRESS] = 0
    bucket.positions[2:] = torch.randint(0, 31, (6,), generator=junk)
    for step in range(6):
        logits = torch.randn(8, V.size, generator=torch.Generator().manual_seed(step))
        one = alone.choose(logits[:2], 2, sampling=False)
        bucket._choose_rows(logits, 8, sampling=False, keep=0)
        assert torch.equal(one.out, bucket._out[:2])
        for name in ("state", "tokens", "positions", "no_speech"):
            assert torch.equal(getattr(alone, name)[:2], getattr(bucket, name)[:2]), name


def test_the_suppression_table_grows_past_its_sets_and_keeps_each() -> None:
    states = _states()
    lists = [(token,) for token in range(SUPPRESS_SETS + 3)]
    rows = [_row([V.sot], DecodeOptions(beam_size=1, suppress_tokens=t)) for t in lists]
    indices = [states._suppress_index(r.group.options) for r in rows]
    assert indices == list(range(len(lists)))
    for index, (token,) in zip(indices, lists, strict=True):
        expected = torch.zeros(V.size, dtype=torch.bool)
        if token < V.size:
            expected[token] = True
        assert torch.equal(states._suppress[index], expected)


def test_a_beam_window_chooses_on_the_device_beside_a_greedy_row() -> None:
    """A window of 2 beams in rows 2 and 0 (the layout says so) beside a greedy row 1: at its
    first choice both beams continue beam 0 with its two best tokens, their state and next
    inputs are written, the record says so; the greedy row chooses as alone."""
    states, alone = _states(), _states()
    beam = DecodeOptions(beam_size=2, suppress_tokens=())
    beams = [_row([V.sot, V.no_timestamps], beam) for _ in range(2)]
    greedy = _row([V.sot, V.no_timestamps])
    states.start([2, 1, 0], [beams[0], greedy, beams[1]])
    alone.start([1], [_row([V.sot, V.no_timestamps])])
    layout = BeamLayout(2, [beams[0].group], torch.tensor([[2, 0]]), [1])
    states.choose(_logits(best=2, n=3), 3, sampling=False, beams=[layout])  # feeds the prompt
    alone.choose(_logits(best=2, n=3)[:2], 2, sampling=False)
    logits = _logits(best=7, n=3, seed=4)
    logits[:, 8] = 9.0  # the second best
    choice = states.choose(logits, 3, sampling=False, beams=[layout])
    reference = alone.choose(logits[:2], 2, sampling=False)
    assert torch.equal(choice.out[1], reference.out[1])
    (record,) = choice.records
    score, parent, token = record[0, 0].tolist()
    assert (parent, token) == (0, 7) and record[0, 1, 2] == 8 and record[0, 1, 1] == 0
    logprobs = logits[2].clone()
    logprobs[list(V.blank_ids)] = -torch.inf
    assert score == pytest.approx(float(logprobs.log_softmax(-1)[7]))
    assert states.tokens[[2, 0]].tolist() == [7, 8]
    assert states.state[[2, 0], COUNT].tolist() == [1, 1]
    assert states.state[[2, 0], LAST].tolist() == [7, 8]
    scores = states.state[:, SCORE].contiguous().view(torch.float64)
    assert float(scores[2]) == score and float(scores[0]) == record[0, 1, 0]
    assert not bool(choice.moves[0].moved.any())  # the beams' caches are alike at the start


def _as_if_captured(states: RowStates) -> None:
    """`choose` takes its CUDA path on the CPU: each "graph" runs what its capture records and
    leaves its results where a replay would (the choice over the whole bucket from the step's
    logits buffer, keeping what the beams read; the beams' choice over padded windows from a
    static index into static outputs)."""
    states.use_graphs = states.capture_beams = True

    def graph(bucket: int, beams_too: bool) -> Any:
        keep = 2 * CAPTURED_BEAM if beams_too else 0

        def replay() -> None:
            states._choose_rows(states._logits[:bucket], bucket, sampling=False, keep=keep)

        return SimpleNamespace(replay=replay)

    made: dict[tuple[int, int], Any] = {}

    def beam_graph(beam: int, windows: int) -> Any:
        if (beam, windows) not in made:
            index = torch.zeros(windows, beam, dtype=torch.long)
            layout = BeamLayout(beam, [], index, [])

            def run() -> Any:
                return states._choose_beam((states._top_lp, states._top_id), layout)

            record, first = run()  # a graph's outputs are its own tensors: clone the views
            names = [f.name for f in dataclasses.fields(first)]
            writes = BeamWrites(*(getattr(first, name).clone() for name in names))

            def replay() -> None:
                new_record, new_writes = run()
                record.copy_(new_record)
                for field in dataclasses.fields(writes):
                    getattr(writes, field.name).copy_(getattr(new_writes, field.name))

            made[(beam, windows)] = (SimpleNamespace(replay=replay), index, (record, writes))
        return made[(beam, windows)]

    states._graph = graph  # type: ignore[method-assign]
    states._beam_graph = beam_graph  # type: ignore[method-assign]


@pytest.mark.parametrize("windows", [1, 3])
def test_the_captured_choice_with_beams_chooses_as_the_eager_one(windows: int) -> None:
    """Windows of 3 beams in scattered rows beside greedy rows, junk in the bucket's free rows:
    the captured path (the whole bucket in a graph that keeps the beams' inputs, then the beams'
    choice over windows padded to their bucket: 3 windows to 4) gives every step the eager
    choice, records and moves."""
    rows = 3 * windows + 2
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(windows)).tolist()
    eager, captured = _states(rows=16), _states(rows=16)
    beam = DecodeOptions(beam_size=3, suppress_tokens=(), length_penalty=0.0)
    layouts = []
    for states in (eager, captured):
        started: list[Row] = []
        groups = []
        for _ in range(windows):
            beams = [_row([V.sot, V.no_timestamps], beam) for _ in range(3)]
            for row in beams[1:]:
                row.group = beams[0].group
            started += beams
            groups.append(beams[0].group)
        started += [_row([V.sot, 5, V.no_timestamps]), _row([V.sot, V.no_timestamps])]
        states.start(order, started)
        index = torch.tensor(order[: 3 * windows]).view(windows, 3)
        layouts.append(BeamLayout(3, groups, index, [0] * windows))
    junk = torch.Generator().manual_seed(5)
    captured.state[rows:] = torch.randint(-1, 20, (16 - rows, COLUMNS), generator=junk)
    captured.state[rows:, SUPPRESS] = 0
    _as_if_captured(captured)
    for step in range(7):
        logits = torch.randn(16, V.size, generator=torch.Generator().manual_seed(10 + step))
        one = eager.choose(logits[:rows], rows, sampling=False, beams=[layouts[0]])
        captured._logits[:] = logits  # what the step wrote into its output buffer
        other = captured.choose(logits[:rows], rows, sampling=False, beams=[layouts[1]])
        assert torch.equal(one.out, other.out)
        assert all(torch.equal(a, b) for a, b in zip(one.records, other.records, strict=True))
        for a, b in zip(one.moves, other.moves, strict=True):
            for field in dataclasses.fields(a):
                assert torch.equal(getattr(a, field.name), getattr(b, field.name)), field.name
        for name in ("state", "tokens", "positions", "no_speech"):
            assert torch.equal(getattr(eager, name)[:rows], getattr(captured, name)[:rows]), name
    beam_rows = order[: 3 * windows]
    assert eager.state[beam_rows, COUNT].tolist() == [6] * len(beam_rows)  # the beams chose
