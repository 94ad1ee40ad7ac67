"""Beam search chosen on the device, replayed on the host a few steps later.

A window of `beam` beams holds `beam` cache rows. After each step, `choose` takes every beam
window's candidates at once (each beam's best `2 x beam` continuations after the rules, scored
by the beam's cumulative log-probability), sorts them per window, and records the best
`2 x beam` as (score, parent beam, token): an end token that ranks above the last survivor
finishes a hypothesis, the first `beam` other candidates survive. Survivors keep their parent's
row where they can (`in_place`), and the device writes what the choice decides: each row's
score, rule state, next token and the count of finished hypotheses, and which rows take another
row's self-attention cache (`StaticDecoder.move_beams`). A window whose hypotheses are complete
or whose length is reached is marked ended, and its rows do nothing more.

The host reads each step's records when it catches up (`LOOKAHEAD` steps behind, as for greedy
rows) and `replay` rebuilds the hypotheses from them with the same rules, in the same order, so
no step waits for it. Before this the host chose every step and the device idled meanwhile: at
5 beams on an H100 a step took 37 ms where the device's work was 22.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpuscribe.workers.engines.batched.search import Group, Row

# Columns of a record: the candidate's score, its parent beam, its token.
SCORE, PARENT, TOKEN = 0, 1, 2


@dataclass(frozen=True, slots=True)
class BeamLayout:
    """Where a step's beam windows of one beam size sit: `index` `[windows, beam]` (on the
    device) holds the cache row of each window's beam `b`, which is `group.rows[b]`;
    `positions` is each window's input position in the step."""

    beam: int
    groups: list[Group]
    index: Any
    positions: list[int]


@dataclass(frozen=True, slots=True)
class BeamWrites:
    """What one step's beam choice writes back, for the rows of a layout (flattened, `[P]`):
    `rows`, the row each continues (`parents`), and for rows whose window chose this step
    (`active`) the new rule state `[P, columns]` and next token. `moved` rows take their
    parent's self-attention cache up to `lengths` positions."""

    rows: Any
    parents: Any
    active: Any
    state: Any
    tokens: Any
    moved: Any
    lengths: Any

    def head(self, count: int) -> BeamWrites:
        """The writes of the first `count` rows (a captured choice pads its windows)."""
        return BeamWrites(
            self.rows[:count], self.parents[:count], self.active[:count], self.state[:count],
            self.tokens[:count], self.moved[:count], self.lengths[:count],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Columns:
    """Where `choice.RowStates` keeps what beams read and write in a row's state."""

    count: int
    last: int
    penultimate: int
    last_timestamp: int
    max_new: int
    prompt_end: int
    candidates: int
    finished: int
    ended: int
    score: int  # an int64 column holding a float64's bits


def choose(
    torch: Any,
    top_lp: Any,
    top_id: Any,
    state: Any,
    positions: Any,
    layout: BeamLayout,
    columns: Columns,
    eot: int,
    timestamp_begin: int,
) -> tuple[Any, BeamWrites]:
    """One step's choice for the windows of `layout`: the record `[windows, 2 x beam, 3]`
    (float64, best first) and what to write. `top_lp`/`top_id` are every row's best
    continuations (at least `2 x beam`, best first), `state` and `positions` the rows' state
    and input positions before this step's choice changed them."""
    c = columns
    index = layout.index
    windows, beam = index.shape
    flat = index.reshape(-1)
    lead = state.index_select(0, index[:, 0])  # what every beam of a window shares
    first = lead[:, c.count] == 0  # only beam 0 is a source at a window's first choice
    best, parent, token = _ranked(torch, top_lp, top_id, state, index, first, c)
    record = torch.stack([best, parent.double(), token.double()], dim=-1)

    is_end = token == eot
    kept = (~is_end).long()
    before = kept.cumsum(1) - kept  # survivors ranked above each candidate
    finishing = (is_end & (before < beam)).long().sum(1)
    finished = torch.minimum(lead[:, c.finished] + finishing, lead[:, c.candidates])
    at_limit = lead[:, c.count] + 1 >= lead[:, c.max_new]
    generating = positions.index_select(0, index[:, 0]) + 1 >= lead[:, c.prompt_end]
    was_ended = lead[:, c.ended].bool()
    active = generating & ~was_ended
    ended = was_ended | (generating & ((finished >= lead[:, c.candidates]) | at_limit))

    ranked = _scatter_ranks(torch, ~is_end & (before < beam), before, beam)
    survivors = [t.gather(1, ranked) for t in (parent, token, best)]
    slot = in_place_slots(torch, survivors[0])
    source, new_token, new_score = [torch.empty_like(t).scatter_(1, slot, t) for t in survivors]
    parents = index.gather(1, source)
    new = _continued(torch, state, parents, new_token, timestamp_begin, c)
    new[:, :, c.score] = new_score.contiguous().view(torch.int64)
    new[:, :, c.finished] = finished[:, None]
    new[:, :, c.ended] = ended.long()[:, None]
    active_rows = active[:, None].expand(windows, beam)
    moved = active_rows & ~ended[:, None] & ~first[:, None] & (parents != index)
    writes = BeamWrites(
        rows=flat,
        parents=parents.reshape(-1),
        active=active_rows.reshape(-1),
        state=new.view(windows * beam, -1),
        tokens=new_token.reshape(-1),
        moved=moved.reshape(-1),
        lengths=positions.index_select(0, flat) + 1,
    )
    return record, writes


def _ranked(
    torch: Any, top_lp: Any, top_id: Any, state: Any, index: Any, first: Any, c: Columns
) -> tuple[Any, Any, Any]:
    """Each window's best `2 x beam` candidates, best first: scores (the beam's score plus the
    continuation's log-probability), parent beams, tokens (`[windows, 2 x beam]` each)."""
    windows, beam = index.shape
    width = 2 * beam
    flat = index.reshape(-1)
    score = state.index_select(0, flat)[:, c.score].view(torch.float64).view(windows, beam)
    lp = top_lp.index_select(0, flat)[:, :width].double().reshape(windows, beam, width)
    ids = top_id.index_select(0, flat)[:, :width].reshape(windows, beam * width)
    candidates = score[:, :, None] + lp
    later_beams = torch.arange(beam, device=index.device)[None, :] > 0
    candidates = candidates.masked_fill((first[:, None] & later_beams)[:, :, None], -torch.inf)
    best, order = candidates.view(windows, beam * width).topk(width, dim=-1)
    parent = (order // width).masked_fill(first[:, None], 0)
    return best, parent, ids.gather(1, order)


def _continued(
    torch: Any, state: Any, parents: Any, tokens: Any, timestamp_begin: int, c: Columns
) -> Any:
    """The rule state `[windows, beam, columns]` of each parent row's state after `tokens`."""
    windows, beam = parents.shape
    p = state.index_select(0, parents.reshape(-1)).view(windows, beam, -1)
    new = p.clone()
    new[:, :, c.count] = p[:, :, c.count] + 1
    new[:, :, c.last] = tokens
    new[:, :, c.penultimate] = p[:, :, c.last]
    is_timestamp = tokens >= timestamp_begin
    new[:, :, c.last_timestamp] = torch.where(is_timestamp, tokens, p[:, :, c.last_timestamp])
    return new


def _scatter_ranks(torch: Any, survivor: Any, before: Any, beam: int) -> Any:
    """`[windows, beam]`: the place in the record of each window's k-th survivor."""
    windows, width = survivor.shape
    places = torch.arange(width, device=survivor.device).expand(windows, width)
    target = torch.where(survivor, before, torch.full_like(before, beam))  # beam: discarded
    ranked = torch.zeros(windows, beam + 1, dtype=torch.long, device=survivor.device)
    return ranked.scatter_(1, target, places)[:, :beam]


def in_place_slots(torch: Any, parents: Any) -> Any:
    """`[windows, beam]`: the row (beam index) each survivor takes, survivors best first with
    their `parents`. A survivor keeps its parent's row unless a better survivor of the same
    parent took it; the others fill the rows no survivor continues, in order (`in_place`)."""
    windows, beam = parents.shape
    device = parents.device
    same = parents[:, :, None] == parents[:, None, :]
    earlier = torch.ones(beam, beam, dtype=torch.bool, device=device).tril(-1)
    first_of_parent = ~(same & earlier).any(-1)
    dummy = torch.full_like(parents, beam)
    taken = torch.zeros(windows, beam + 1, dtype=torch.bool, device=device)
    taken = taken.scatter_(1, torch.where(first_of_parent, parents, dummy), True)[:, :beam]
    free = (~taken).long()
    free_rank = free.cumsum(1) - free
    beams = torch.arange(beam, device=device).expand(windows, beam)
    by_rank = torch.zeros(windows, beam + 1, dtype=torch.long, device=device)
    by_rank = by_rank.scatter_(1, torch.where(free.bool(), free_rank, dummy), beams)[:, :beam]
    rest = (~first_of_parent).long()
    rest_rank = (rest.cumsum(1) - rest).clamp(max=beam - 1)
    return torch.where(first_of_parent, parents, by_rank.gather(1, rest_rank))


# --- the host ---------------------------------------------------------------------------------
def replay(group: Group, record: Sequence[Sequence[float]], eot: int, timestamp_begin: int) -> int:
    """Rebuild `group`'s beams from one step's `record` (the device's choice, best first), as
    the device made it. Returns how many beam rows took another row's hypothesis, or -1 when
    the window ended (its hypotheses are complete or its length is reached)."""
    rows = group.rows
    beam = group.options.beam_size
    sources = rows[:1] if not rows[0].tokens else rows
    survivors: list[tuple[float, int, int]] = []
    for score, parent, token in record:
        candidate = (float(score), int(parent), int(token))
        if candidate[2] == eot:
            if len(group.finished) < group.max_candidates:
                group.finish(sources[candidate[1]].tokens, candidate[0])
        else:
            survivors.append(candidate)
        if len(survivors) >= beam:
            break
    at_limit = len(rows[0].tokens) + 1 >= group.max_new_tokens
    # Fewer than `beam` survivors cannot come (each parent has at most one end token among the
    # 2 x beam candidates kept); were it to, the window ends rather than repeat a hypothesis.
    if len(group.finished) >= group.max_candidates or len(survivors) < beam or at_limit:
        if at_limit:
            for score, parent, token in survivors:
                group.finish([*sources[parent].tokens, token], score)
        return -1
    return _continue(rows, sources, survivors, timestamp_begin)


def _continue(
    rows: list[Row], sources: list[Row], survivors: list[tuple[float, int, int]], ts_begin: int
) -> int:
    old = [(list(s.tokens), s.last_timestamp) for s in sources]
    moved = 0
    for row, (score, parent, token) in zip(rows, in_place(rows, sources, survivors), strict=True):
        tokens, last_timestamp = old[parent]
        moved += sources[parent] is not row
        row.tokens = [*tokens, token]
        row.logprob = score
        row.last_timestamp = token if token >= ts_begin else last_timestamp
        row.next_token = token
    return moved


def in_place(
    rows: list[Row], sources: list[Row], survivors: list[tuple[float, int, int]]
) -> list[tuple[float, int, int]]:
    """`survivors` (best first) in the order of `rows`: a survivor stays in its parent's row
    where no better survivor of that parent took it, the others fill the rows left in order.
    A beam whose row keeps its hypothesis needs no copy of its cache (with real tiny.en at 5
    beams, taking the rows in score order moved 30 % of the beam rows every step)."""
    where = {id(row): k for k, row in enumerate(rows)}
    placed: list[tuple[float, int, int] | None] = [None] * len(rows)
    rest: list[tuple[float, int, int]] = []
    for survivor in survivors:
        k = where.get(id(sources[survivor[1]]))
        if k is not None and placed[k] is None:
            placed[k] = survivor
        else:
            rest.append(survivor)
    fill = iter(rest)
    return [p if p is not None else next(fill) for p in placed]
