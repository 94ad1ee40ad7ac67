"""Per-sequence decoding state and Whisper's decoding rules, for rows of a continuous batch.

Pure bookkeeping in Python (tokens, scores, beams) plus `apply_rules`, which turns a step's raw
logits into log-probabilities for every row at once with each row's own rules: suppressed
tokens, blank suppression at its first step, and the timestamp rules (timestamps first, in
pairs, never decreasing, forced when their total probability beats every text token). These
are CTranslate2's rules (the ones faster-whisper relies on), applied per row so that a row's
result does not depend on the other rows in its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

NO_TIMESTAMP_RULES = -1


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The special token ids the rules need."""

    size: int
    eot: int
    sot: int
    no_timestamps: int
    no_speech: int
    timestamp_begin: int
    blank_ids: tuple[int, ...]  # suppressed at the first step when `suppress_blank`
    default_suppress: tuple[int, ...]  # what -1 in `suppress_tokens` stands for

    @property
    def timestamp_end(self) -> int:
        return self.size - 1


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """One `generate` call's settings (CTranslate2's names and meanings)."""

    beam_size: int = 5
    patience: float = 1.0
    length_penalty: float = 1.0
    max_length: int = 448
    suppress_blank: bool = True
    suppress_tokens: tuple[int, ...] = (-1,)
    sampling_temperature: float = 1.0
    sampling_topk: int = 1
    num_hypotheses: int = 1
    max_initial_timestamp_index: int = 50
    return_no_speech_prob: bool = False
    forced_length: int = 0  # benchmark only: exactly this many tokens, no end before

    @property
    def sampling(self) -> bool:
        return self.beam_size == 1 and self.sampling_topk != 1 and self.sampling_temperature > 0

    @property
    def rows(self) -> int:
        """Rows of the batch one window occupies."""
        if self.beam_size > 1:
            return self.beam_size
        return max(1, self.num_hypotheses)


@dataclass(slots=True)
class Hypothesis:
    tokens: list[int]
    score: float  # cumulative log-probability, the end token's included
    normalized: float


@dataclass(slots=True)
class Row:
    """One sequence in the batch: a beam, a sample or the greedy path of one window."""

    group: Group
    tokens: list[int] = field(default_factory=list)  # generated so far (no prompt, no end)
    logprob: float = 0.0
    position: int = 0  # where the next fed token is written
    next_token: int = 0  # the token fed at the next step
    finished: bool = False
    last_timestamp: int = NO_TIMESTAMP_RULES


class Group:
    """The rows decoding one window, and what they have produced."""

    def __init__(
        self,
        request: Any,
        index: int,
        prompt: list[int],
        options: DecodeOptions,
        timestamps: bool,
        max_new_tokens: int,
        *,
        sot_position: int,
        forced_start: int,
    ) -> None:
        self.request = request
        self.index = index
        self.prompt = prompt
        self.options = options
        self.timestamps = timestamps
        self.max_new_tokens = max_new_tokens
        self.sot_position = sot_position  # where <|startoftranscript|> is in the prompt
        self.forced_start = forced_start  # the first prompt position fed as a decode step
        self.rows: list[Row] = []
        self.finished: list[Hypothesis] = []
        self.no_speech_prob = 0.0
        self.done = False
        self.slot = -1  # where its audio is in a pooled cache (`slots.py`), while it has rows

    @property
    def max_candidates(self) -> int:
        o = self.options
        if o.beam_size > 1:
            return max(1, round(o.beam_size * o.patience))
        return o.rows

    def finish(self, tokens: list[int], score: float) -> None:
        length = max(1, len(tokens))
        penalty = self.options.length_penalty
        normalized = score / (length**penalty) if penalty else score
        self.finished.append(Hypothesis(list(tokens), score, normalized))

    def best(self) -> list[Hypothesis]:
        ranked = sorted(self.finished, key=lambda h: h.normalized, reverse=True)
        return ranked[: max(1, self.options.num_hypotheses)]


def suppress_ids(options: DecodeOptions, vocabulary: Vocabulary) -> list[int]:
    """The ids suppressed at every step (CTranslate2: -1 stands for the model's default set)."""
    ids: set[int] = set()
    for token in options.suppress_tokens:
        if token == -1:
            ids.update(vocabulary.default_suppress)
        elif token >= 0:
            ids.add(token)
    return sorted(i for i in ids if i < vocabulary.size)


@dataclass(slots=True)
class RuleInputs:
    """Per-row rule state for one step, as tensors on the logits' device."""

    suppress: Any  # [n, vocab] bool: the row's suppressed set
    first: Any  # [n] bool: the row's first generated token
    blank: Any  # [n] bool: suppress blank at the first step
    timestamps: Any  # [n] bool: timestamp rules on
    last: Any  # [n] long: last generated token (or -1)
    penultimate: Any  # [n] long: the one before (or -1)
    last_timestamp: Any  # [n] long: last timestamp generated (or -1)
    max_initial: Any  # [n] long: largest timestamp id allowed first
    force_end: Any  # [n] bool: only the end token may come (benchmark forced length)
    forbid_end: Any  # [n] bool: the end token may not come (benchmark forced length)


@dataclass(frozen=True, slots=True)
class RuleConstants:
    """Tensors the rules use at every step, made once per batch."""

    ids: Any  # [1, vocab] token ids
    is_timestamp: Any  # [1, vocab] bool
    is_text: Any  # [1, vocab] bool: below the first timestamp
    below_eot: Any  # [1, vocab] bool
    not_eot: Any  # [1, vocab] bool
    blank: Any  # [1, vocab] bool

    @classmethod
    def of(cls, torch: Any, vocabulary: Vocabulary, device: Any) -> RuleConstants:
        v = vocabulary
        ids = torch.arange(v.size, device=device)[None, :]
        blank = torch.zeros(1, v.size, dtype=torch.bool, device=device)
        if v.blank_ids:
            blank[0, list(v.blank_ids)] = True
        return cls(
            ids=ids,
            is_timestamp=ids >= v.timestamp_begin,
            is_text=ids < v.timestamp_begin,
            below_eot=ids < v.eot,
            not_eot=ids != v.eot,
            blank=blank,
        )


def apply_rules(
    torch: Any,
    logits: Any,
    state: RuleInputs,
    vocabulary: Vocabulary,
    constants: RuleConstants | None = None,
) -> tuple[Any, Any]:
    """Log-probabilities `[n, vocab]` after each row's suppressions and timestamp rules, and the
    masked logits they come from."""
    v = vocabulary
    c = constants or RuleConstants.of(torch, vocabulary, logits.device)
    ts = state.timestamps
    first = state.first
    later = ts & ~first
    last_ts = later & (state.last >= v.timestamp_begin)
    pen_ts = (state.penultimate >= v.timestamp_begin) | (state.penultimate < 0)
    text_next = last_ts & pen_ts
    mask = state.suppress | ((first & state.blank)[:, None] & c.blank)
    mask = mask | ((ts & first)[:, None] & (c.is_text | (c.ids > state.max_initial[:, None])))
    mask = mask | (text_next[:, None] & c.is_timestamp)
    mask = mask | ((last_ts & ~pen_ts)[:, None] & c.below_eot)
    mask = mask | (later[:, None] & c.is_timestamp & (c.ids < state.last_timestamp[:, None]))
    mask = mask | (state.force_end[:, None] & c.not_eot)
    mask[:, v.no_timestamps] |= ts
    mask[:, v.eot] |= state.forbid_end
    masked = logits.masked_fill(mask, -math.inf)
    logprobs = masked.log_softmax(-1)
    # Where the timestamps' total probability beats every text token, a timestamp must come.
    # (Computed for every row rather than after asking the device which rows: no wait.)
    check = later & ~text_next
    text_best = logprobs[:, : v.timestamp_begin].max(-1).values
    ts_total = logprobs[:, v.timestamp_begin :].logsumexp(-1)
    force_ts = check & (ts_total > text_best)
    masked = masked.masked_fill(force_ts[:, None] & c.is_text, -math.inf)
    return masked.log_softmax(-1), masked
