"""batched/search.py: Whisper's decoding rules (CTranslate2's), per row, on small random logits;
suppression lists; beam bookkeeping."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gpuscribe.workers.engines.batched.search import (
    DecodeOptions,
    Group,
    RuleConstants,
    RuleInputs,
    Vocabulary,
    apply_rules,
    suppress_ids,
)

torch = pytest.importorskip("torch")

# A vocabulary of 24: text 0-9, then the specials, then 8 timestamps (16-23).
V = Vocabulary(
    size=24,
    eot=10,
    sot=11,
    no_timestamps=14,
    no_speech=12,
    timestamp_begin=15,
    blank_ids=(0, 10),  # " " and the end token, as Whisper's
    default_suppress=(3, 4),
)
TEXT = list(range(V.timestamp_begin))  # everything below the first timestamp, eot included
TIMESTAMPS = list(range(V.timestamp_begin, V.size))
NONE = -1


def _state(
    *,
    first: bool = False,
    blank: bool = False,
    timestamps: bool = True,
    last: int = NONE,
    penultimate: int = NONE,
    last_timestamp: int = NONE,
    max_initial: int = V.size - 1,
    force_end: bool = False,
    forbid_end: bool = False,
    suppress: tuple[int, ...] = (),
) -> dict[str, Any]:
    return dict(locals())


def _inputs(*rows: dict[str, Any]) -> RuleInputs:
    def long(name: str) -> Any:
        return torch.tensor([r[name] for r in rows], dtype=torch.long)

    def flag(name: str) -> Any:
        return torch.tensor([r[name] for r in rows], dtype=torch.bool)

    suppress = torch.zeros(len(rows), V.size, dtype=torch.bool)
    for i, r in enumerate(rows):
        suppress[i, list(r["suppress"])] = True
    return RuleInputs(
        suppress=suppress,
        first=flag("first"),
        blank=flag("blank"),
        timestamps=flag("timestamps"),
        last=long("last"),
        penultimate=long("penultimate"),
        last_timestamp=long("last_timestamp"),
        max_initial=long("max_initial"),
        force_end=flag("force_end"),
        forbid_end=flag("forbid_end"),
    )


def _allowed(logits: Any, *rows: dict[str, Any]) -> list[set[int]]:
    logprobs, masked = apply_rules(torch, logits, _inputs(*rows), V)
    assert logprobs.shape == masked.shape == logits.shape
    allowed = [set(torch.nonzero(torch.isfinite(lp)).flatten().tolist()) for lp in logprobs]
    for i, lp in enumerate(logprobs):
        assert set(torch.nonzero(torch.isfinite(masked[i])).flatten().tolist()) == allowed[i]
        assert float(lp[list(allowed[i])].exp().sum()) == pytest.approx(1.0, abs=1e-5)
    return allowed


def _random(rows: int = 1, seed: int = 0) -> Any:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, V.size, generator=generator)


def _flat(seed: int = 0) -> Any:
    """Logits where text is unlikely enough that no timestamp is forced by probability."""
    logits = _random(seed=seed)
    logits[0, :10] += 6.0
    return logits


# --- timestamp rules ------------------------------------------------------------------------
def test_timestamp_comes_first_and_not_after_the_max_initial_timestamp() -> None:
    limit = V.timestamp_begin + 3
    (allowed,) = _allowed(_random(), _state(first=True, max_initial=limit))
    assert allowed == set(range(V.timestamp_begin, limit + 1))


def test_without_timestamp_rules_text_comes_first_and_no_timestamps_is_allowed() -> None:
    logits = _random()
    (allowed,) = _allowed(logits, _state(first=True, timestamps=False))
    assert allowed == set(range(V.size))


def test_no_timestamps_token_is_never_chosen_under_timestamp_rules() -> None:
    logits = _flat()
    logits[0, V.no_timestamps] = 100.0
    (allowed,) = _allowed(logits, _state(last=3, penultimate=2, last_timestamp=V.timestamp_begin))
    assert V.no_timestamps not in allowed
    assert 3 in allowed


def test_after_a_closed_pair_text_or_end_must_come() -> None:
    """Two timestamps in a row (a segment's end, the next one's start): no third one."""
    t = V.timestamp_begin + 2
    (allowed,) = _allowed(_flat(), _state(last=t, penultimate=t, last_timestamp=t))
    assert allowed == set(TEXT) - {V.no_timestamps}
    # The first generated token was a timestamp: the same (the prompt counts as a timestamp).
    (allowed,) = _allowed(_flat(), _state(last=t, penultimate=NONE, last_timestamp=t))
    assert not allowed & set(TIMESTAMPS)


def test_after_text_then_a_timestamp_the_pair_closes_or_the_window_ends() -> None:
    t = V.timestamp_begin + 2
    logits = _random()
    logits[0, V.eot] = 8.0  # likelier than all timestamps together: none is forced
    (allowed,) = _allowed(logits, _state(last=t, penultimate=5, last_timestamp=t))
    # Text below the end token forbidden (CTranslate2 leaves the other specials to the
    # suppress list), the end allowed, timestamps from the last one on.
    assert allowed == {*range(V.eot, V.no_timestamps), *range(t, V.size)}


def test_timestamps_never_decrease() -> None:
    t = V.timestamp_begin + 4
    (allowed,) = _allowed(_flat(), _state(last=6, penultimate=5, last_timestamp=t))
    assert allowed & set(TIMESTAMPS) == set(range(t, V.size))  # equal allowed, as CTranslate2
    assert set(range(10)) - {3, 4} <= allowed | {3, 4}


def test_a_timestamp_is_forced_when_their_total_probability_beats_every_text_token() -> None:
    logits = torch.zeros(1, V.size)  # 9 timestamps at the probability of any one text token
    state = _state(last=6, penultimate=5, last_timestamp=V.timestamp_begin)
    (allowed,) = _allowed(logits, state)
    assert allowed == set(TIMESTAMPS)
    logits[0, 7] = math.log(len(TIMESTAMPS)) + 0.5  # one text token now beats the timestamps' sum
    (allowed,) = _allowed(logits, state)
    assert {7, V.eot} <= allowed
    assert set(TIMESTAMPS) <= allowed


def test_forcing_is_decided_on_the_masked_probabilities() -> None:
    """Timestamps before the last one are masked first, so they cannot force a timestamp."""
    logits = torch.zeros(1, V.size)
    logits[0, : V.timestamp_begin] = 1.0
    logits[0, V.timestamp_begin : V.size - 1] = 5.0  # all but the last timestamp are likely
    state = _state(last=6, penultimate=5, last_timestamp=V.size - 1)
    (allowed,) = _allowed(logits, state)
    assert V.size - 1 in allowed and 6 in allowed  # the one allowed timestamp alone loses


def test_rules_do_not_apply_without_timestamps() -> None:
    t = V.timestamp_begin + 4
    logits = torch.zeros(1, V.size)
    (allowed,) = _allowed(logits, _state(timestamps=False, last=t, penultimate=t, last_timestamp=t))
    assert allowed == set(range(V.size))


# --- suppression ----------------------------------------------------------------------------
def test_blank_is_suppressed_at_the_first_step_only() -> None:
    logits = _random()
    (allowed,) = _allowed(logits, _state(first=True, blank=True, timestamps=False))
    assert allowed == set(range(V.size)) - set(V.blank_ids)
    (allowed,) = _allowed(logits, _state(first=False, blank=True, timestamps=False, last=5))
    assert allowed == set(range(V.size))
    (allowed,) = _allowed(logits, _state(first=True, blank=False, timestamps=False))
    assert allowed == set(range(V.size))


def test_suppress_list_with_minus_one_is_the_default_set() -> None:
    def ids(tokens: tuple[int, ...]) -> list[int]:
        return suppress_ids(DecodeOptions(suppress_tokens=tokens), V)

    assert ids((-1,)) == [3, 4]
    assert ids((-1, 7, 3)) == [3, 4, 7]
    assert ids((7,)) == [7]
    assert ids(()) == []
    assert ids((-5, 99)) == []  # other negatives and ids beyond the vocabulary are ignored


def test_suppressed_tokens_never_come() -> None:
    logits = _random()
    logits[0, 3] = 100.0
    (allowed,) = _allowed(logits, _state(timestamps=False, last=5, suppress=(3, 4)))
    assert allowed == set(range(V.size)) - {3, 4}


# --- benchmark forced length ----------------------------------------------------------------
def test_forced_length_forbids_then_forces_the_end() -> None:
    logits = _random()
    logits[0, V.eot] = 100.0
    (allowed,) = _allowed(logits, _state(timestamps=False, last=5, forbid_end=True))
    assert allowed == set(range(V.size)) - {V.eot}
    (allowed,) = _allowed(_random(), _state(timestamps=False, last=5, force_end=True))
    assert allowed == {V.eot}


# --- rows are independent -------------------------------------------------------------------
def test_each_row_gets_its_own_rules_whatever_shares_its_batch() -> None:
    t = V.timestamp_begin + 2
    states = [
        _state(first=True, blank=True, max_initial=V.timestamp_begin + 1),
        _state(timestamps=False, last=5, suppress=(1, 2)),
        _state(last=t, penultimate=5, last_timestamp=t),
        _state(last=t, penultimate=t, last_timestamp=t),
        _state(last=6, penultimate=5, last_timestamp=t, forbid_end=True),
        _state(timestamps=False, first=True, blank=True, force_end=True),
    ]
    logits = _random(len(states), seed=3)
    together, masked = apply_rules(torch, logits, _inputs(*states), V)
    constants = RuleConstants.of(torch, V, logits.device)
    for i, state in enumerate(states):
        alone, alone_masked = apply_rules(torch, logits[i : i + 1], _inputs(state), V, constants)
        assert torch.equal(torch.isfinite(alone[0]), torch.isfinite(together[i]))
        finite = torch.isfinite(alone[0])
        assert torch.allclose(alone[0][finite], together[i][finite], atol=1e-6)
        assert torch.equal(alone_masked[0], masked[i])


# --- options and beams ----------------------------------------------------------------------
def test_rows_per_window() -> None:
    assert DecodeOptions(beam_size=5).rows == 5
    assert DecodeOptions(beam_size=1).rows == 1
    sampling = DecodeOptions(beam_size=1, sampling_topk=0, sampling_temperature=0.4)
    assert sampling.sampling
    assert DecodeOptions(beam_size=1, num_hypotheses=5).rows == 5
    assert not DecodeOptions(beam_size=5, sampling_topk=0).sampling
    assert not DecodeOptions(beam_size=1, sampling_topk=1).sampling


def _group(**options: Any) -> Group:
    return Group(
        None, 0, [V.sot], DecodeOptions(**options), True, 10, sot_position=0, forced_start=0
    )


def test_finished_hypotheses_are_ranked_by_length_normalised_score() -> None:
    group = _group(beam_size=3, length_penalty=1.0)
    group.finish([1, 2, 3, 4], -2.0)  # -0.5 per token
    group.finish([1], -0.8)  # -0.8
    group.finish([], -0.3)  # an empty hypothesis counts as one token
    best = group.best()
    assert len(best) == 1
    assert best[0].tokens == [] and best[0].normalized == pytest.approx(-0.3)
    assert [h.normalized for h in group.finished] == pytest.approx([-0.5, -0.8, -0.3])
    assert [h.score for h in group.finished] == [-2.0, -0.8, -0.3]


def test_length_penalty_zero_ranks_by_cumulative_score() -> None:
    group = _group(beam_size=3, length_penalty=0.0, num_hypotheses=2)
    group.finish([1, 2, 3, 4], -2.0)
    group.finish([1], -0.8)
    group.finish([1, 2], -1.0)
    assert [h.tokens for h in group.best()] == [[1], [1, 2]]


def test_hypotheses_are_copied_and_candidates_follow_patience() -> None:
    tokens = [1, 2]
    group = _group(beam_size=4, patience=1.5)
    group.finish(tokens, -1.0)
    tokens.append(3)
    assert group.finished[0].tokens == [1, 2]
    assert group.max_candidates == 6
    assert _group(beam_size=1, num_hypotheses=3).max_candidates == 3
    assert _group(beam_size=1).max_candidates == 1
