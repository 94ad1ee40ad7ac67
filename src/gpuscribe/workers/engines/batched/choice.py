"""Token choice on the device, so that the host never stands between two decode steps.

Each cache row has its rule state beside it on the device (how many tokens it has generated,
its last two tokens, its last timestamp, its options) and the tail of its prompt. After a step,
`RowStates.choose` applies Whisper's rules to every row at once (`search.apply_rules`), picks
each row's token (greedy, or drawn for sampling rows), feeds a row still inside its prompt its
next prompt token instead, updates the rule state, and writes the next step's tokens and
positions in place. Nothing waits for the device: the batcher launches the next step before it
reads what this one chose, and catches up with its own bookkeeping one step behind.

A prompt is fed as decode steps from its <|startoftranscript|> token on (at most
`FORCED_TOKENS` of them): a new row costs a few row-steps of the batch instead of an eager
prompt pass, and the step that feeds <|startoftranscript|> also gives the window's no-speech
probability. Positions before that (a previous-text prompt) are prefilled.

Beams are chosen on the device too (`beams.py`): the step's choice takes every beam window's
candidates, writes each surviving beam's score, rule state and next token, and returns a record
of its decisions that the host replays when it catches up, and which rows take another row's
cache (the batcher has the decoder copy them).

On CUDA a choice without sampling is captured in a CUDA graph per row bucket, like the step, and
replayed over the whole bucket: its ~75 small kernels cost one launch. With beams in the batch,
a second graph per bucket also keeps what the beams' choice reads (every row's best
continuations and its rule state and position before the choice changed them), and the beams'
own choice (about 170 small operations) is captured too, a graph per beam size and bucket of
windows, over windows padded to the bucket (padding windows read row 0; what they decide is
dropped); only writing its result back runs eagerly. Rows past the batch in the bucket are free
rows; what the choice writes there is overwritten when a window starts in them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuscribe.workers.engines.batched import beams
from gpuscribe.workers.engines.batched.beams import BeamLayout, BeamWrites, Columns
from gpuscribe.workers.engines.batched.decoder import batch_buckets, bucket_for, capture_graph
from gpuscribe.workers.engines.batched.search import (
    DecodeOptions,
    Row,
    RuleConstants,
    RuleInputs,
    Vocabulary,
    apply_rules,
    suppress_ids,
)
from gpuscribe.workers.engines.batched.transfer import upload

log = logging.getLogger(__name__)

SUPPRESS_SETS = 16  # distinct suppression lists the device table holds before it grows
FORCED_TOKENS = 8  # prompt tokens fed as steps: <|sot|>, language, task, notimestamps, a prefix
# Columns of the per-row state (one long tensor, so that moving a row is one copy).
COUNT, LAST, PENULTIMATE, LAST_TIMESTAMP, MAX_INITIAL = 0, 1, 2, 3, 4
TIMESTAMPS, BLANK, FORCED_LENGTH, MAX_NEW, PROMPT_END = 5, 6, 7, 8, 9
FORCED_START, SOT_POSITION, SUPPRESS, SAMPLING = 10, 11, 12, 13
CANDIDATES, FINISHED, ENDED, SCORE = 14, 15, 16, 17  # beams: a window's, and the beam's score
COLUMNS = 18
BEAM_COLUMNS = Columns(
    count=COUNT, last=LAST, penultimate=PENULTIMATE, last_timestamp=LAST_TIMESTAMP,
    max_new=MAX_NEW, prompt_end=PROMPT_END, candidates=CANDIDATES, finished=FINISHED,
    ended=ENDED, score=SCORE,
)  # fmt: skip
_TOKEN_COLUMNS = (COUNT, LAST, PENULTIMATE, LAST_TIMESTAMP)  # what a row's tokens decide
OUT_TOKEN, OUT_LOGPROB, OUT_NO_SPEECH = 0, 1, 2
CAPTURED_BEAM = 8  # the largest beam whose candidates the captured choice keeps (larger: eager)
BEAMS_AT_LOAD = (DecodeOptions().beam_size,)  # captured at load (the default); others when met


def forced_start(prompt: Sequence[int], sot: int) -> int:
    """The first prompt position fed as a decode step: the <|startoftranscript|> token, or
    later when more than `FORCED_TOKENS` follow it (at least the last token is fed)."""
    return max(prompt.index(sot), len(prompt) - FORCED_TOKENS)


@dataclass(frozen=True, slots=True)
class Choice:
    """What one step chose, on the device: `out` `[n, 3]` float64 (token, its log-probability
    after the rules, the row's no-speech probability), and for each beam layout its record
    (`beams.choose`) and the cache rows to move."""

    out: Any
    records: list[Any]
    moves: list[BeamWrites]


class RowStates:
    """The device-side decoding state of every cache row, and the step's token choice."""

    def __init__(self, torch: Any, decoder: Any, vocabulary: Vocabulary) -> None:
        self._torch = torch
        self.vocabulary = vocabulary
        rows, device = decoder.rows, decoder.device
        self.device = device
        self.max_position = decoder.shape.max_len - 1
        self.tokens, self.positions = decoder.tokens, decoder.positions  # the step's inputs
        self.state = torch.zeros(rows, COLUMNS, dtype=torch.long, device=device)
        self.forced = torch.zeros(rows, FORCED_TOKENS, dtype=torch.long, device=device)
        self.temperature = torch.ones(rows, dtype=torch.float32, device=device)
        self.no_speech = torch.zeros(rows, dtype=torch.float32, device=device)
        self._out = torch.zeros(rows, 3, dtype=torch.float64, device=device)
        self._constants = RuleConstants.of(torch, vocabulary, device)
        self._suppress_keys: dict[tuple[int, ...], int] = {}
        self._suppress = torch.zeros(SUPPRESS_SETS, vocabulary.size, dtype=torch.bool,
                                     device=device)  # fmt: skip
        self._logits = decoder.logits  # the step's output buffer, read by captured choices
        # What the beams' choice reads, kept by the choice before it changes the rows.
        self._before = torch.zeros_like(self.state)
        self._before_positions = torch.zeros_like(self.positions)
        width = 2 * CAPTURED_BEAM
        self._top_lp = torch.zeros(rows, width, dtype=torch.float32, device=device)
        self._top_id = torch.zeros(rows, width, dtype=torch.long, device=device)
        self._buckets = decoder.batch_buckets
        self.use_graphs = bool(decoder.use_graphs)
        self._graphs: dict[tuple[int, bool], Any] = {}
        # The beams' choice, captured per (beam, windows bucket): the graph, its static index
        # input and its static outputs (record, writes).
        self._beam_graphs: dict[tuple[int, int], tuple[Any, Any, tuple[Any, BeamWrites]]] = {}
        self.capture_beams = self.use_graphs
        self._pool: Any = None

    # --- host -> device ---------------------------------------------------------------------
    def upload(self, values: np.ndarray[Any, Any]) -> Any:
        """`values` on the device without waiting for it (`transfer.upload`)."""
        return upload(self._torch, values, self.device)

    def start(self, targets: Sequence[int], rows: Sequence[Row]) -> None:
        """Rows `targets` begin `rows`' windows: rule state from scratch, their prompt tails,
        and their first input (the prompt token at `forced_start`)."""
        packed = np.zeros((len(rows), COLUMNS + FORCED_TOKENS + 3), dtype=np.int64)
        for k, row in enumerate(rows):
            start = row.group.forced_start
            tail = row.group.prompt[start:]
            packed[k, :COLUMNS] = self._pack(row)
            packed[k, COLUMNS : COLUMNS + len(tail)] = tail
            packed[k, -3:] = (targets[k], tail[0], start)
        temperatures = np.array([r.group.options.sampling_temperature for r in rows], np.float32)
        self._scatter(packed, temperatures)

    def _scatter(self, packed: np.ndarray[Any, Any], temperatures: np.ndarray[Any, Any]) -> None:
        data = self.upload(packed)
        index = data[:, -3]
        self.state.index_copy_(0, index, data[:, :COLUMNS])
        self.forced.index_copy_(0, index, data[:, COLUMNS : COLUMNS + FORCED_TOKENS])
        self.tokens.index_copy_(0, index, data[:, -2])
        self.positions.index_copy_(0, index, data[:, -1])
        self.temperature.index_copy_(0, index, self.upload(temperatures))
        self.no_speech.index_fill_(0, index, 0.0)

    def _pack(self, row: Row) -> list[int]:
        group, v = row.group, self.vocabulary
        o = group.options
        start, sot = group.forced_start, group.sot_position
        values = [0] * COLUMNS
        for column, value in zip(_TOKEN_COLUMNS, _token_state(row), strict=True):
            values[column] = value
        values[MAX_INITIAL] = v.timestamp_begin + o.max_initial_timestamp_index
        values[TIMESTAMPS] = int(group.timestamps)
        values[BLANK] = int(o.suppress_blank)
        values[FORCED_LENGTH] = int(bool(o.forced_length))
        values[MAX_NEW] = group.max_new_tokens
        values[PROMPT_END] = len(group.prompt)
        values[FORCED_START] = start
        values[SOT_POSITION] = sot if sot >= start else -1
        values[SUPPRESS] = self._suppress_index(o)
        values[SAMPLING] = int(o.sampling)
        values[CANDIDATES] = group.max_candidates  # FINISHED, ENDED and SCORE (0.0) start at 0
        return values

    def _suppress_index(self, options: DecodeOptions) -> int:
        key = options.suppress_tokens
        index = self._suppress_keys.get(key)
        if index is None:
            index = len(self._suppress_keys)
            if index == self._suppress.shape[0]:  # full: a table twice as large, new graphs
                self._suppress = self._torch.cat([self._suppress, self._suppress.clone()])
                self._graphs.clear()
            ids = suppress_ids(options, self.vocabulary)
            self._suppress[index] = False
            if ids:
                self._suppress[index, ids] = True
            self._suppress_keys[key] = index
        return index

    def set_no_speech(self, rows: Any, sot_logits: Any) -> None:
        """No-speech probabilities of rows whose <|startoftranscript|> was prefilled."""
        probs = sot_logits.float().softmax(-1)[:, self.vocabulary.no_speech]
        self.no_speech.index_copy_(0, rows, probs)

    def move(self, sources: Any, targets: Any) -> None:
        """Rows `sources` onto rows `targets` (the batch compacting)."""
        for tensor in (self.state, self.forced, self.temperature, self.no_speech,
                       self.tokens, self.positions):  # fmt: skip
            tensor[targets] = tensor[sources]

    # --- the choice -------------------------------------------------------------------------
    def choose(
        self, logits: Any, n: int, *, sampling: bool, beams: Sequence[BeamLayout] = ()
    ) -> Choice:
        """Choose every row's token from a step's `logits` (`[n, vocab]`, float32, the rows'
        input at `self.positions`), the beams of the windows in `beams` among them, write the
        next step's inputs, and return the choice. Beam rows are chosen for as greedy rows
        first (in the captured graph where there is one), then their windows' choice overwrites
        what it decides."""
        width = 2 * max((layout.beam for layout in beams), default=0)
        graph = None
        if self.use_graphs and not sampling and width <= 2 * CAPTURED_BEAM:
            graph = self._graph(bucket_for(n, self._buckets), bool(beams))
        if graph is not None:
            graph.replay()
            top = (self._top_lp[:n], self._top_id[:n])
            chosen = [self._captured_beams(layout) or self._choose_beam(top, layout)
                      for layout in beams]  # fmt: skip
        else:
            top = self._choose_rows(logits, n, sampling=sampling, keep=width)
            chosen = [self._choose_beam(top, layout) for layout in beams]
        for _, writes in chosen:
            self._write_beams(writes)
        records = [record for record, _ in chosen]
        return Choice(self._out[:n], records, [writes for _, writes in chosen])

    def capture_all(self) -> None:
        """Capture the choice at every row bucket now (at load), without and with beams, and
        the beams' choice of the default beam size at every bucket of windows."""
        for bucket in self._buckets:
            for beams_too in (False, True):
                if self.use_graphs:
                    self._graph(bucket, beams_too)
        for beam in BEAMS_AT_LOAD:
            for windows in self._window_buckets(beam):
                if self.capture_beams:
                    self._beam_graph(beam, windows)

    def _graph(self, bucket: int, beams_too: bool) -> Any:
        graph = self._graphs.get((bucket, beams_too))
        if graph is None and self.use_graphs:
            graph = self._capture(bucket, beams_too)
        return graph

    def _capture(self, bucket: int, beams_too: bool) -> Any:
        """The choice over `bucket` rows in a CUDA graph, or None (then every choice is made
        eagerly). What the warm-up run writes is put back: a capture may come while rows
        decode (after the suppression table grew)."""
        torch = self._torch
        written = (self.state, self.no_speech, self.tokens, self.positions, self._out)
        kept = [t.clone() for t in written]
        graph = None
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            keep = 2 * CAPTURED_BEAM if beams_too else 0
            graph = self._graphs[(bucket, beams_too)] = capture_graph(
                torch,
                lambda: self._choose_rows(self._logits[:bucket], bucket, sampling=False, keep=keep),
                self._pool,
                warm_ups=1,
            )
        except Exception:
            log.warning("the token choice was not captured in a CUDA graph: it runs eagerly",
                        exc_info=True)  # fmt: skip
            self.use_graphs = False
        finally:
            for tensor, saved in zip(written, kept, strict=True):
                tensor.copy_(saved)
        return graph

    def _choose_rows(self, logits: Any, n: int, *, sampling: bool, keep: int) -> tuple[Any, Any]:
        """Every row's choice as a greedy (or sampling) row over rows `0..n-1`, eagerly (or
        being captured), into `self._out` and the next step's inputs. With `keep` (twice the
        largest beam), first what the beams' choice reads: the rows' rule state and position
        before this choice changes them, and each row's best `keep` continuations, returned
        (views of static buffers where they fit, for a captured graph to write)."""
        torch = self._torch
        s = self.state[:n]
        logprobs, masked = apply_rules(torch, logits, self._rules(s), self.vocabulary,
                                       self._constants)  # fmt: skip
        best_lp, pick = logprobs.max(-1)
        if sampling:
            drawn = torch.multinomial((masked / self.temperature[:n, None]).softmax(-1), 1)[:, 0]
            sampled = s[:, SAMPLING].bool()
            pick = torch.where(sampled, drawn, pick)
            best_lp = torch.where(sampled, logprobs.gather(1, drawn[:, None])[:, 0], best_lp)
        position = self.positions[:n]
        top = self._keep_for_beams(logprobs, n, keep) if keep else (None, None)
        in_prompt = position + 1 < s[:, PROMPT_END]
        offset = (position + 1 - s[:, FORCED_START]).clamp(0, FORCED_TOKENS - 1)
        prompt_token = self.forced[:n].gather(1, offset[:, None])[:, 0]
        self._advance(s, pick, ~in_prompt)
        at_sot = position == s[:, SOT_POSITION]
        no_speech = (logits[:, self.vocabulary.no_speech] - logits.logsumexp(-1)).exp()
        self.no_speech[:n] = torch.where(at_sot, no_speech, self.no_speech[:n])
        self.tokens[:n] = torch.where(in_prompt, prompt_token, pick)
        self.positions[:n] = (position + 1).clamp(max=self.max_position)
        out = self._out[:n]
        out[:, OUT_TOKEN] = pick
        out[:, OUT_LOGPROB] = best_lp
        out[:, OUT_NO_SPEECH] = self.no_speech[:n]
        return top

    def _keep_for_beams(self, logprobs: Any, n: int, keep: int) -> tuple[Any, Any]:
        """What the beams' choice reads, kept before the choice changes the rows."""
        self._before[:n] = self.state[:n]
        self._before_positions[:n] = self.positions[:n]
        top_lp, top_id = logprobs.topk(keep, dim=-1)
        if keep > self._top_lp.shape[1]:
            return top_lp, top_id  # a beam too wide for the buffers (eager only)
        self._top_lp[:n, :keep] = top_lp
        self._top_id[:n, :keep] = top_id
        return self._top_lp[:n, :keep], self._top_id[:n, :keep]

    def _choose_beam(self, top: tuple[Any, Any], layout: BeamLayout) -> tuple[Any, BeamWrites]:
        """A layout's beam choice (`beams.choose`), from every row's best continuations `top`
        and the rows' state and positions as they were before this step's choice."""
        v = self.vocabulary
        state, positions = self._before, self._before_positions
        return beams.choose(self._torch, *top, state, positions, layout, BEAM_COLUMNS, v.eot,
                            v.timestamp_begin)  # fmt: skip

    def _window_buckets(self, beam: int) -> tuple[int, ...]:
        return batch_buckets(max(1, self.state.shape[0] // beam))

    def _captured_beams(self, layout: BeamLayout) -> tuple[Any, BeamWrites] | None:
        """A layout's beam choice through its captured graph (after the choice's graph kept
        its inputs), or None where it has none."""
        windows, beam = layout.index.shape
        captured = self._beam_graph(beam, bucket_for(windows, self._window_buckets(beam)))
        if captured is None:
            return None
        graph, index, (record, writes) = captured
        index[:windows] = layout.index
        index[windows:] = 0  # padding windows read row 0; what they decide is dropped
        graph.replay()
        return record[:windows], writes.head(windows * beam)

    def _beam_graph(self, beam: int, windows: int) -> Any:
        captured = self._beam_graphs.get((beam, windows))
        if captured is None and self.capture_beams:
            captured = self._capture_beams(beam, windows)
        return captured

    def _capture_beams(self, beam: int, windows: int) -> Any:
        """The beams' choice for `windows` windows of `beam` in a CUDA graph reading a static
        index and the kept inputs, with its static outputs; None (logged, and beams are chosen
        eagerly from then on) where the capture fails. The choice writes nothing: its warm-up
        leaves the rows as they are."""
        torch = self._torch
        index = torch.zeros(windows, beam, dtype=torch.long, device=self.device)
        layout = BeamLayout(beam, [], index, [])
        top = (self._top_lp, self._top_id)
        outputs: list[tuple[Any, BeamWrites]] = []
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = capture_graph(
                torch, lambda: outputs.append(self._choose_beam(top, layout)), self._pool,
                warm_ups=1,
            )  # fmt: skip
        except Exception:
            log.warning("the beams' choice was not captured in a CUDA graph: it runs eagerly",
                        exc_info=True)  # fmt: skip
            self.capture_beams = False
            return None
        captured = (graph, index, outputs[-1])
        self._beam_graphs[(beam, windows)] = captured
        return captured

    def _write_beams(self, writes: BeamWrites) -> None:
        """A beam choice's rule state and next tokens, for the rows whose window chose."""
        torch = self._torch
        rows, active = writes.rows, writes.active
        state = torch.where(active[:, None], writes.state, self.state.index_select(0, rows))
        self.state.index_copy_(0, rows, state)
        tokens = torch.where(active, writes.tokens, self.tokens.index_select(0, rows))
        self.tokens.index_copy_(0, rows, tokens)

    def _rules(self, s: Any) -> RuleInputs:
        forced = s[:, FORCED_LENGTH].bool()
        at_limit = s[:, COUNT] >= s[:, MAX_NEW]
        return RuleInputs(
            suppress=self._suppress[s[:, SUPPRESS]],
            first=s[:, COUNT] == 0,
            blank=s[:, BLANK].bool(),
            timestamps=s[:, TIMESTAMPS].bool(),
            last=s[:, LAST],
            penultimate=s[:, PENULTIMATE],
            last_timestamp=s[:, LAST_TIMESTAMP],
            max_initial=s[:, MAX_INITIAL],
            force_end=forced & at_limit,
            forbid_end=forced & ~at_limit,
        )

    def _advance(self, s: Any, pick: Any, generated: Any) -> None:
        """The rule state after `pick`, for rows whose step generated (not inside the prompt)."""
        torch = self._torch
        last = s[:, LAST].clone()
        s[:, PENULTIMATE] = torch.where(generated, last, s[:, PENULTIMATE])
        s[:, LAST] = torch.where(generated, pick, last)
        s[:, COUNT] += generated.long()
        timestamp = generated & (pick >= self.vocabulary.timestamp_begin)
        s[:, LAST_TIMESTAMP] = torch.where(timestamp, pick, s[:, LAST_TIMESTAMP])


def _token_state(row: Row) -> tuple[int, int, int, int]:
    """The `_TOKEN_COLUMNS` of `row`'s rule state, from its tokens so far."""
    tokens = row.tokens
    last = tokens[-1] if tokens else -1
    penultimate = tokens[-2] if len(tokens) > 1 else -1
    return len(tokens), last, penultimate, row.last_timestamp


def row_generates(row: Row, position: int) -> bool:
    """Whether a step that fed `row` at `position` chose its next generated token."""
    return position + 1 >= len(row.group.prompt)
