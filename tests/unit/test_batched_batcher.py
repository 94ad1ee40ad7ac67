"""batched/batcher.py on a tiny random Whisper, on the CPU: a window's greedy result does not
depend on what shares its batch; beams keep their scores right through row reordering;
sampling gives its hypotheses; urgent windows take the first free rows, also before windows
encoded ahead; equal priorities take turns by task; cancelling frees rows; a failed step fails
only what was in flight; a working batch logs what its steps did."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from gpuscribe.domain import Priority
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines.batched import batcher as batcher_module
from gpuscribe.workers.engines.batched import crossattn, rowcopy
from gpuscribe.workers.engines.batched.batcher import (
    BatchCounters,
    Batcher,
    EncoderInput,
    GenerationResult,
)
from gpuscribe.workers.engines.batched.decoder import StaticDecoder
from gpuscribe.workers.engines.batched.model import batch_priority, vocabulary_from_tokenizer
from gpuscribe.workers.engines.batched.search import DecodeOptions, Vocabulary
from gpuscribe.workers.engines.transformers_engine import (
    TEST_ARCHITECTURE,
    _random_info,
)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

FRAMES = 2 * TEST_ARCHITECTURE.max_source_positions
# max_length 24: at most 12 new tokens a window (Whisper's half), so that tests stay short.
GREEDY = DecodeOptions(beam_size=1, max_length=24, suppress_tokens=())
WAIT = 60.0


# How steps attend with a window's rows (`crossattn`): row by row (None), together ("gathered",
# "kernel"), or through each window's slot in a pooled cache (`slots.py`).
GROUPED = [None, "gathered", "kernel", "pooled", "pooled-kernel"]


def _triton_interpreter() -> None:
    """Skips where Triton is not installed (CI); the unit tests' conftest chose its
    interpreter, which runs its kernels on CPU tensors."""
    pytest.importorskip("triton")
    if crossattn._kernel() is None:
        pytest.skip("Triton cannot be used here")


@pytest.fixture(scope="module")
def vocabulary(whisper: Any) -> Vocabulary:
    info = _random_info(TEST_ARCHITECTURE)
    return vocabulary_from_tokenizer(info.tokenizer_file, TEST_ARCHITECTURE.vocab_size, info)


@pytest.fixture
def make(whisper: Any, vocabulary: Vocabulary) -> Iterator[Callable[..., Batcher]]:
    made: list[Batcher] = []

    def make_batcher(rows: int, grouped: str | None = None) -> Batcher:
        """A batcher of `rows` rows' cache; `grouped`: how its steps attend with a window's rows
        together ("gathered", "kernel" in Triton's interpreter), or row by row (None); "pooled"
        and "pooled-kernel": the same through a pooled cache's slots."""
        if grouped in ("kernel", "pooled-kernel"):
            _triton_interpreter()
        pooled = grouped is not None and grouped.startswith("pooled")
        decoder = StaticDecoder(whisper, rows, use_graphs=False, pooled=pooled)
        decoder.grouped = "kernel" if grouped and grouped.endswith("kernel") else grouped
        if pooled:
            decoder.grouped = "kernel" if grouped == "pooled-kernel" else "gathered"
        batcher = Batcher(decoder, vocabulary, TEST_ARCHITECTURE.n_mels)
        made.append(batcher)
        return batcher

    yield make_batcher
    for batcher in made:
        batcher.close()


def _windows(count: int, seed: int) -> EncoderInput:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(count, TEST_ARCHITECTURE.n_mels, FRAMES)).astype(np.float32)
    return EncoderInput(features=features)


def _prompt(v: Vocabulary, timestamps: bool = False) -> list[int]:
    return [v.sot] if timestamps else [v.sot, v.no_timestamps]


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _teacher_forced_score(
    batcher: Batcher, encoded: EncoderInput, tokens: list[int], prompt: list[int] | None = None
) -> float:
    """Sum of the log-probabilities of `tokens` after `prompt` (the no-timestamps prompt by
    default), no rule masking anything (no suppression, no timestamps, blank allowed)."""
    v = batcher.vocabulary
    prompt = prompt or _prompt(v)
    hidden = encoded.hidden[0][None]
    ids = torch.tensor([[*prompt, *tokens]])
    logits, _ = batcher.decoder.teacher_forced(hidden, ids, [])
    logprobs = logits[0].log_softmax(-1)
    positions = range(len(prompt) - 1, len(prompt) - 1 + len(tokens))
    return float(sum(logprobs[p, t] for p, t in zip(positions, tokens, strict=True)))


# --- results do not depend on the batch -----------------------------------------------------
@pytest.mark.parametrize("layout", [None, "pooled"])
def test_greedy_alone_equals_greedy_in_a_mixed_batch(
    make: Callable[..., Batcher], layout: str | None
) -> None:
    batcher = make(16, layout)
    v = batcher.vocabulary
    mine = _windows(2, 0)
    prompts = [_prompt(v), _prompt(v, timestamps=True)]
    alone = batcher.generate(mine, prompts, GREEDY)
    assert all(len(r.sequences_ids[0]) > 0 for r in alone)
    # The same windows again, now among other windows of every kind, submitted from threads.
    others: list[tuple[EncoderInput, list[list[int]], DecodeOptions]] = [
        (_windows(3, 1), [_prompt(v)] * 3, GREEDY),
        (_windows(1, 2), [_prompt(v, True)], DecodeOptions(beam_size=3, max_length=30)),
        (
            _windows(2, 3),
            [_prompt(v)] * 2,
            DecodeOptions(beam_size=1, sampling_topk=0, num_hypotheses=2, max_length=20),
        ),
        (_windows(1, 4), [[v.sot, 220, 764, v.no_timestamps]], GREEDY),  # a longer prompt
    ]
    results: dict[int, list[GenerationResult]] = {}

    def run(index: int, job: tuple[EncoderInput, list[list[int]], DecodeOptions]) -> None:
        results[index] = batcher.generate(*job)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(others)]
    for thread in threads:
        thread.start()
    together = batcher.generate(_windows(2, 0), prompts, GREEDY)
    for thread in threads:
        thread.join(WAIT)
    assert len(results) == len(others)
    assert [r.sequences_ids for r in together] == [r.sequences_ids for r in alone]
    scores = [r.scores[0] for r in alone]
    assert [r.scores[0] for r in together] == pytest.approx(scores, abs=1e-4)


@pytest.mark.parametrize(
    ("lookahead", "layout"), [(0, None), (1, None), (2, None), (3, None), (2, "pooled")]
)
def test_steps_queued_ahead_change_no_result(
    make: Callable[..., Batcher], lookahead: int, layout: str | None
) -> None:
    """The batcher reads each step's choice up to `lookahead` steps late: rows that end are
    stepped that many times more and those outputs dropped. Windows of every kind, with rows
    ending at different steps and a window that starts while others decode, give the same
    tokens and scores as with no step queued ahead."""

    def run(batcher: Batcher) -> list[tuple[list[list[int]], list[float]]]:
        v = batcher.vocabulary
        short = DecodeOptions(beam_size=1, max_length=24, suppress_tokens=(), forced_length=3)
        jobs = [
            (_windows(3, 11), [_prompt(v), _prompt(v, True), [v.sot, 220, 764, v.no_timestamps]],
             GREEDY),
            (_windows(2, 12), [_prompt(v)] * 2, short),
            (_windows(1, 13), [_prompt(v, True)], DecodeOptions(beam_size=3, max_length=30)),
        ]  # fmt: skip
        pending = [batcher.submit(*job) for job in jobs[:2]]
        _wait_for(lambda: batcher.steps > 2, "the first steps")
        pending.append(batcher.submit(*jobs[2]))
        results = [r for p in pending for r in p.result()]
        return [(r.sequences_ids, [round(x, 4) for x in r.scores]) for r in results]

    reference = make(16, layout)
    reference.lookahead = 0
    queued = make(16, layout)
    queued.lookahead = lookahead
    assert run(queued) == run(reference)
    _wait_for(lambda: not queued._rows, "every row to be freed")


def test_a_request_knows_when_its_first_window_entered_the_batch(
    make: Callable[[int], Batcher],
) -> None:
    batcher = make(4)
    submitted = time.time()
    pending = batcher.submit(_windows(2, 12), [_prompt(batcher.vocabulary)] * 2, GREEDY)
    pending.result()
    assert pending.started_at is not None and submitted <= pending.started_at <= time.time()


def test_greedy_score_is_the_sequence_log_probability(make: Callable[[int], Batcher]) -> None:
    batcher = make(4)
    encoded = _windows(1, 5)
    options = DecodeOptions(beam_size=1, max_length=24, suppress_tokens=(), suppress_blank=False)
    (result,) = batcher.generate(encoded, [_prompt(batcher.vocabulary)], options)
    tokens = result.sequences_ids[0]
    assert 0 < len(tokens) <= 12  # at most half of max_length
    score = _teacher_forced_score(batcher, encoded, tokens)
    assert result.scores[0] * len(tokens) == pytest.approx(score, abs=1e-3)


@pytest.mark.parametrize("head", [10, 0], ids=["previous-text", "long-prefix"])
def test_long_prompts_score_and_see_no_speech_as_teacher_forcing(
    make: Callable[[int], Batcher], head: int
) -> None:
    """A prompt with previous text before <|startoftranscript|> (its head prefilled, the rest
    fed as steps), and one whose tokens after it are more than the steps feed (the start token
    itself prefilled): the result scores as teacher forcing does, and the no-speech
    probability is the one at <|startoftranscript|>."""
    batcher = make(4)
    v = batcher.vocabulary
    prompt = [*range(300, 300 + head), v.sot, *range(400, 400 + (12 - head)), v.no_timestamps]
    encoded = _windows(1, 11)
    options = DecodeOptions(
        beam_size=1, max_length=40, suppress_tokens=(), suppress_blank=False,
        return_no_speech_prob=True,
    )  # fmt: skip
    (result,) = batcher.generate(encoded, [prompt], options)
    tokens = result.sequences_ids[0]
    score = _teacher_forced_score(batcher, encoded, tokens, prompt)
    assert result.scores[0] * max(1, len(tokens)) == pytest.approx(score, abs=1e-3)
    logits, _ = batcher.decoder.teacher_forced(encoded.hidden[0][None], torch.tensor([prompt]), [])
    expected = float(logits[0, head].softmax(-1)[v.no_speech])
    assert result.no_speech_prob == pytest.approx(expected, rel=1e-4)


# --- beams, sampling, forced length --------------------------------------------------------
def test_beam_scores_survive_row_reordering(make: Callable[[int], Batcher]) -> None:
    """Every returned hypothesis scores what a full forward pass over it gives: the beams'
    cache rows followed their prefixes through every reordering."""
    batcher = make(8)
    encoded = _windows(1, 6)
    options = DecodeOptions(
        beam_size=4,
        num_hypotheses=4,
        length_penalty=0.0,  # scores are cumulative log-probabilities
        max_length=24,
        suppress_tokens=(),
        suppress_blank=False,
    )
    (result,) = batcher.generate(encoded, [_prompt(batcher.vocabulary)], options)
    assert len(result.sequences_ids) == 4
    assert result.scores == sorted(result.scores, reverse=True)
    assert len({tuple(s) for s in result.sequences_ids}) == 4
    for tokens, score in zip(result.sequences_ids, result.scores, strict=True):
        assert score == pytest.approx(_teacher_forced_score(batcher, encoded, tokens), abs=1e-3)
    greedy = batcher.generate(
        encoded,
        [_prompt(batcher.vocabulary)],
        DecodeOptions(
            beam_size=1, max_length=24, suppress_tokens=(), suppress_blank=False, length_penalty=0.0
        ),
    )[0]
    if len(greedy.sequences_ids[0]) == len(result.sequences_ids[0]):
        assert result.scores[0] >= greedy.scores[0] * len(greedy.sequences_ids[0]) - 1e-4
    _wait_for(lambda: not batcher._rows, "every row to be freed")


@pytest.mark.parametrize("grouped", GROUPED)
def test_beams_of_two_sizes_decode_in_a_busy_batch_as_alone(
    make: Callable[..., Batcher], grouped: str | None
) -> None:
    """Windows of 2 and of 4 beams (two layouts in each step) beside short greedy windows that
    end early, so that compaction moves the beams' rows while steps are queued ahead: the same
    hypotheses and scores as each job alone, also where each window's rows attend to its audio
    together."""
    batcher = make(24, grouped)
    v = batcher.vocabulary
    two = DecodeOptions(beam_size=2, max_length=30, suppress_tokens=())
    four = DecodeOptions(beam_size=4, num_hypotheses=2, max_length=30, suppress_tokens=())
    jobs = [
        (_windows(2, 21), [_prompt(v), _prompt(v, timestamps=True)], two),
        (_windows(2, 22), [_prompt(v)] * 2, four),
    ]
    alone = [batcher.generate(*job) for job in jobs]
    short = DecodeOptions(beam_size=1, max_length=24, suppress_tokens=(), forced_length=2)
    filler = batcher.submit(_windows(6, 23), [_prompt(v)] * 6, short)
    moved = batcher.beam_rows_moved
    pending = [batcher.submit(*job) for job in jobs]
    filler.result()
    together = [p.result() for p in pending]
    for one, other in zip(alone, together, strict=True):
        assert [r.sequences_ids for r in other] == [r.sequences_ids for r in one]
        for a, b in zip(one, other, strict=True):
            assert b.scores == pytest.approx(a.scores, abs=1e-4)
    assert batcher.beam_rows_moved > moved  # beams did take other rows' hypotheses
    assert (batcher.grouped_steps > 0) == bool(grouped)


@pytest.mark.parametrize(
    ("method", "grouped"),
    [("looked-up", None), ("every", None), ("looked-up", "gathered"), ("looked-up", "pooled")],
)
def test_beams_in_a_busy_batch_score_what_a_full_pass_gives(
    make: Callable[..., Batcher], method: str, grouped: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Windows of 4 beams beside greedy windows that end early (compaction moves the beams'
    rows while two steps are queued ahead): every hypothesis scores what a full forward pass
    gives, with the moved rows looked up and with every beam row copied (CUDA's fallback), and
    with each window's rows attending to its audio together."""
    monkeypatch.setattr(rowcopy, "default_method", lambda device: method)
    batcher = make(48, grouped)
    v = batcher.vocabulary
    beams = DecodeOptions(
        beam_size=4, num_hypotheses=4, max_length=40, suppress_tokens=(), suppress_blank=False,
        length_penalty=0.0,
    )  # fmt: skip
    short = DecodeOptions(beam_size=1, max_length=40, forced_length=3, suppress_tokens=())
    filler = batcher.submit(_windows(6, 24), [_prompt(v)] * 6, short)
    encoded = _windows(8, 25)
    results = batcher.submit(encoded, [_prompt(v)] * 8, beams).result()
    filler.result()
    for window, result in enumerate(results):
        one = EncoderInput(features=encoded.features[window : window + 1])  # type: ignore[index]
        one.hidden = [encoded.hidden[window]]
        for tokens, score in zip(result.sequences_ids, result.scores, strict=True):
            assert score == pytest.approx(_teacher_forced_score(batcher, one, tokens), abs=1e-3)
    assert batcher.beam_rows_moved > 0
    assert (batcher.grouped_steps > 0) == bool(grouped)


def test_a_pooled_cache_decodes_beam_windows_the_per_row_one_cannot_hold(
    make: Callable[..., Batcher],
) -> None:
    """Four rows' bytes hold no window of 5 beams per row (it takes 5 rows); pooled, each
    window's audio is one slot beside 5 rows of text, and two windows of 5 beams decode at once
    beside greedy windows that end early (compaction, slots freed and taken again): every
    hypothesis scores what a full forward pass gives, and every slot comes back."""
    per_row = make(4)
    v = per_row.vocabulary
    beams = DecodeOptions(
        beam_size=5, num_hypotheses=5, max_length=30, suppress_tokens=(), suppress_blank=False,
        length_penalty=0.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="rows per window"):
        per_row.submit(_windows(1, 30), [_prompt(v)], beams)
    batcher = make(4, "pooled")
    assert batcher._slots is not None
    short = DecodeOptions(beam_size=1, max_length=30, forced_length=2, suppress_tokens=())
    filler = batcher.submit(_windows(3, 31), [_prompt(v)] * 3, short)
    encoded = _windows(3, 32)
    pending = batcher.submit(encoded, [_prompt(v)] * 3, beams)
    most = 0
    while not pending.done():
        most = max(most, len(batcher._rows))
        time.sleep(0.001)
    results = pending.result()
    filler.result()
    assert most == 10  # two windows of 5 beams at once; the third waited for a slot
    for window, result in enumerate(results):
        one = EncoderInput(features=encoded.features[window : window + 1])  # type: ignore[index]
        one.hidden = [encoded.hidden[window]]
        assert len(result.sequences_ids) == 5
        for tokens, score in zip(result.sequences_ids, result.scores, strict=True):
            assert score == pytest.approx(_teacher_forced_score(batcher, one, tokens), abs=1e-3)
    _wait_for(lambda: not batcher._rows, "every row to be freed")
    assert batcher._slots.taken == 0


def test_sampling_gives_its_hypotheses(make: Callable[[int], Batcher]) -> None:
    batcher = make(8)
    options = DecodeOptions(
        beam_size=1, sampling_topk=0, sampling_temperature=1.0, num_hypotheses=3, max_length=24
    )
    torch.manual_seed(0)
    results = batcher.generate(_windows(2, 7), [_prompt(batcher.vocabulary)] * 2, options)
    assert len(results) == 2
    for result in results:
        assert len(result.sequences_ids) == 3
        assert len(result.scores) == 3
        assert result.scores == sorted(result.scores, reverse=True)
    # At temperature 1 over 51,864 tokens of a random model, samples differ.
    assert len({tuple(s) for r in results for s in r.sequences_ids}) > 1


def test_forced_length_decodes_exactly_that_many_tokens(make: Callable[[int], Batcher]) -> None:
    batcher = make(4)
    v = batcher.vocabulary
    for length in (1, 7):
        options = DecodeOptions(beam_size=1, forced_length=length)
        results = batcher.generate(_windows(2, 8), [_prompt(v), _prompt(v, True)], options)
        assert [len(r.sequences_ids[0]) for r in results] == [length, length]
        assert v.eot not in results[0].sequences_ids[0]


def test_no_speech_probability_is_returned_when_asked(make: Callable[[int], Batcher]) -> None:
    batcher = make(4)
    encoded = _windows(1, 9)
    v = batcher.vocabulary
    options = DecodeOptions(beam_size=2, max_length=10, return_no_speech_prob=True)
    (result,) = batcher.generate(encoded, [_prompt(v, True)], options)
    logits, _ = batcher.decoder.teacher_forced(encoded.hidden[0][None], torch.tensor([[v.sot]]), [])
    expected = float(logits[0, 0].softmax(-1)[v.no_speech])
    assert result.no_speech_prob == pytest.approx(expected, rel=1e-4)


def test_bad_requests_are_refused(make: Callable[[int], Batcher]) -> None:
    batcher = make(2)
    v = batcher.vocabulary
    with pytest.raises(ValueError, match="prompts for"):
        batcher.submit(_windows(2, 0), [_prompt(v)], GREEDY)
    with pytest.raises(ValueError, match="rows per window"):
        batcher.submit(_windows(1, 0), [_prompt(v)], DecodeOptions(beam_size=3))
    with pytest.raises(ValueError, match="startoftranscript"):
        batcher.submit(_windows(1, 0), [[v.no_timestamps]], GREEDY)


# --- priorities -----------------------------------------------------------------------------
class _Finishing:
    """Names of pending windows in the order their results came (each waited on a thread)."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def watch(self, name: str, pending: Any) -> None:
        def wait() -> None:
            try:
                pending.result()
            finally:
                with self._lock:
                    self.order.append(name)

        thread = threading.Thread(target=wait)
        thread.start()
        self.threads.append(thread)

    def join(self) -> list[str]:
        for thread in self.threads:
            thread.join(WAIT)
        return self.order


@contextmanager
def _held(batcher: Batcher) -> Iterator[None]:
    """The batcher thread waits inside a call while the block runs (what it submits is only
    seen once the block ends)."""
    entered, gate = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(WAIT)

    holder = threading.Thread(target=lambda: batcher.call(hold))
    holder.start()
    try:
        assert entered.wait(WAIT)
        yield
    finally:
        gate.set()
        holder.join(WAIT)


def test_an_urgent_window_takes_the_first_free_row(make: Callable[[int], Batcher]) -> None:
    batcher = make(2)
    v = batcher.vocabulary

    def forced(length: int) -> DecodeOptions:
        return DecodeOptions(beam_size=1, forced_length=length, max_length=448)

    finishing = _Finishing()
    finishing.watch("short", batcher.submit(_windows(1, 10), [_prompt(v)], forced(10)))
    finishing.watch("long", batcher.submit(_windows(1, 11), [_prompt(v)], forced(60)))
    _wait_for(lambda: len(batcher._rows) == 2, "both rows to be busy")
    with _held(batcher):  # the rest is queued while the batcher waits
        assert len(batcher._rows) == 2
        normal, most_urgent = batch_priority(Priority.NORMAL), batch_priority(Priority.URGENT)
        for name, seed in (("normal-1", 12), ("normal-2", 13)):
            queued = batcher.submit(_windows(1, seed), [_prompt(v)], forced(5), priority=normal)
            finishing.watch(name, queued)
        urgent = batcher.submit(_windows(1, 14), [_prompt(v)], forced(5), priority=most_urgent)
        finishing.watch("urgent", urgent)
    assert finishing.join() == ["short", "urgent", "normal-1", "normal-2", "long"]


def _occupied(batcher: Batcher, options: DecodeOptions, seed: int) -> _Finishing:
    """Every row of `batcher` busy with one window ("long") of `options`, watched."""
    finishing = _Finishing()
    pending = batcher.submit(_windows(1, seed), [_prompt(batcher.vocabulary)], options)
    finishing.watch("long", pending)
    _wait_for(lambda: len(batcher._rows) == batcher.decoder.rows, "the rows to be busy")
    return finishing


def test_windows_encoded_ahead_still_yield_to_an_urgent_one(
    make: Callable[[int], Batcher],
) -> None:
    """The batcher encodes waiting windows before rows free up; one that arrives later with a
    higher priority still takes the next free row before them."""
    batcher = make(1)
    v = batcher.vocabulary
    forced = DecodeOptions(beam_size=1, forced_length=5, max_length=448)
    long = DecodeOptions(beam_size=1, forced_length=220, max_length=448)
    finishing = _occupied(batcher, long, 30)
    normal, urgent = batch_priority(Priority.NORMAL), batch_priority(Priority.URGENT)
    finishing.watch("normal", batcher.submit(_windows(1, 31), [_prompt(v)], forced,
                                             priority=normal))  # fmt: skip
    _wait_for(lambda: len(batcher._ready) == 1, "the normal window to be encoded ahead")
    with _held(batcher):  # the urgent window is queued while the batcher waits
        assert len(batcher._ready) == 1 and len(batcher._rows) == 1  # still decoding "long"
        finishing.watch("urgent", batcher.submit(_windows(1, 32), [_prompt(v)], forced,
                                                 priority=urgent))  # fmt: skip
    assert finishing.join() == ["long", "urgent", "normal"]


def test_tasks_of_equal_priority_take_turns(make: Callable[[int], Batcher]) -> None:
    """Windows of equal priority go a window of each task a round, every task's opening window
    first: a task begun after a long one is not queued behind the whole of it."""
    batcher = make(1)
    v = batcher.vocabulary
    forced = DecodeOptions(beam_size=1, forced_length=5, max_length=448)
    long = DecodeOptions(beam_size=1, forced_length=120, max_length=448)
    finishing = _occupied(batcher, long, 40)
    normal = batch_priority(Priority.NORMAL)
    with _held(batcher):
        for task, windows in (("a", 3), ("b", 2)):  # as a task's transcription submits them
            first = batcher.next_turn(normal)
            for index in range(windows):
                turn = None if index == 0 else first + index
                pending = batcher.submit(_windows(1, 41 + index), [_prompt(v)], forced,
                                         priority=normal, turn=turn)  # fmt: skip
                finishing.watch(f"{task}{index}", pending)
    assert finishing.join() == ["long", "a0", "b0", "a1", "b1", "a2"]


def test_a_task_begun_later_opens_before_the_turns_already_encoded(
    make: Callable[[int], Batcher],
) -> None:
    """A task's opening window goes before the later windows of its priority that were encoded
    before it arrived; `next_turn` follows the turns taken to be encoded."""
    batcher = make(1)
    normal = batch_priority(Priority.NORMAL)
    assert batcher.next_turn(normal) == 0
    v = batcher.vocabulary
    long = DecodeOptions(beam_size=1, forced_length=120, max_length=448)
    forced = DecodeOptions(beam_size=1, forced_length=5, max_length=448)
    finishing = _Finishing()
    first = batcher.next_turn(normal)
    for i, options in enumerate((long, forced, forced)):
        pending = batcher.submit(_windows(1, 50 + i), [_prompt(v)], options, priority=normal,
                                 turn=None if i == 0 else first + i)  # fmt: skip
        finishing.watch(f"a{i}", pending)
    _wait_for(lambda: len(batcher._ready) == 2, "the rest to be encoded ahead")
    assert batcher.next_turn(normal) == first + 2  # turns 1 and 2 taken
    assert batcher.next_turn(batch_priority(Priority.LOW)) == 0  # each priority has its own
    finishing.watch("b0", batcher.submit(_windows(1, 53), [_prompt(v)], forced, priority=normal))
    assert finishing.join() == ["a0", "b0", "a1", "a2"]


def test_beam_windows_are_encoded_ahead_by_their_rows(make: Callable[[int], Batcher]) -> None:
    """What is encoded ahead is bounded in rows, so that a window of 5 beams counts 5: a later
    urgent window waits behind about `ENCODER_BATCH` rows, not that many windows. One that
    outranks every window encoded ahead is encoded at once."""
    batcher = make(5)
    v = batcher.vocabulary
    beams = DecodeOptions(beam_size=5, forced_length=5, max_length=448)
    long = DecodeOptions(beam_size=5, forced_length=200, max_length=448)
    finishing = _occupied(batcher, long, 60)
    normal, urgent = batch_priority(Priority.NORMAL), batch_priority(Priority.URGENT)
    with _held(batcher):
        for i in range(8):
            finishing.watch(f"normal-{i}", batcher.submit(_windows(1, 61 + i), [_prompt(v)],
                                                          beams, priority=normal))  # fmt: skip
    _wait_for(lambda: len(batcher._ready) == 7, "35 rows to be encoded ahead")
    assert len(batcher._waiting) == 1 and len(batcher._rows) == 5  # 32 rows reached at 7
    with _held(batcher):
        finishing.watch("urgent", batcher.submit(_windows(1, 70), [_prompt(v)], beams,
                                                 priority=urgent))  # fmt: skip
    _wait_for(lambda: not batcher._waiting, "the urgent window to be encoded at once")
    assert len(batcher._rows) == 5  # while "long" still decodes
    order = finishing.join()
    assert order[:2] == ["long", "urgent"]
    assert sorted(order[2:]) == [f"normal-{i}" for i in range(8)]


# --- what the log says ----------------------------------------------------------------------
def test_a_summary_gives_the_steps_between_two_counters() -> None:
    seconds = {"calls": 0.0, "admit": 1.0, "step": 2.0, "select": 10.0}
    earlier = BatchCounters(100.0, 10, 1_000, 1, 0, seconds)
    later = BatchCounters(160.0, 110, 16_000, 21, 5_000,
                          {"calls": 0.0, "admit": 1.5, "step": 2.5, "select": 12.0})  # fmt: skip
    assert later.summary(earlier) == (
        "100 steps in 60 s, 150.0 rows a step (50.0 of them beams), 20% waited on the host;"
        " ms a step: 30.00 (calls 0.00, admit 5.00, step 5.00, select 20.00)"
    )
    assert earlier.summary(earlier) is None  # no step: nothing to say


def test_a_working_batch_logs_its_summary(
    make: Callable[[int], Batcher], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(batcher_module, "STATS_SECONDS", 0.0)
    batcher = make(2)
    with caplog.at_level(logging.INFO, logger=batcher_module.__name__):
        batcher.generate(_windows(2, 80), [_prompt(batcher.vocabulary)] * 2, GREEDY)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch: ")]
    assert lines and "rows a step" in lines[-1]


# --- cancellation and failures --------------------------------------------------------------
def test_cancelling_frees_the_rows_and_raises(make: Callable[[int], Batcher]) -> None:
    batcher = make(4)
    v = batcher.vocabulary
    stop = threading.Event()
    long = DecodeOptions(beam_size=2, forced_length=200, max_length=448)
    pending = batcher.submit(_windows(2, 15), [_prompt(v)] * 2, long, should_stop=stop.is_set)
    _wait_for(lambda: batcher.steps >= 3, "decoding to start")
    assert len(batcher._rows) == 4
    stop.set()
    started = time.monotonic()
    with pytest.raises(TaskCancelled):
        pending.result()
    assert time.monotonic() - started < 10  # within a few steps, not 200
    _wait_for(lambda: not batcher._rows, "the rows to be freed")
    steps = batcher.steps
    time.sleep(0.05)
    assert batcher.steps == steps  # nothing left decoding
    (result,) = batcher.generate(_windows(1, 16), [_prompt(v)], GREEDY)  # still serving
    assert result.sequences_ids[0]


@pytest.mark.parametrize(("beam", "layout"), [(1, None), (3, None), (3, "pooled")])
def test_a_window_whose_scores_are_not_numbers_fails_its_task(
    make: Callable[..., Batcher], beam: int, layout: str | None
) -> None:
    """Audio that makes the model's output NaN (broken weights or input, an overflow: the
    fused encoder once gave NaN in float32 on CUDA) fails its task with a clear error instead
    of decoding noise, or, with a forced length, decoding forever; the batch keeps serving."""
    batcher = make(8, layout)
    v = batcher.vocabulary
    broken = _windows(1, 40)
    broken.features[0, :, :100] = np.nan  # type: ignore[index]
    options = DecodeOptions(beam_size=beam, max_length=24, suppress_tokens=(), forced_length=3)
    with pytest.raises(RuntimeError, match="not a number"):
        batcher.generate(broken, [_prompt(v)], options)
    (result,) = batcher.generate(_windows(1, 41), [_prompt(v)], options)
    assert len(result.sequences_ids[0]) == 3
    _wait_for(lambda: not batcher._rows, "the rows to be freed")


def test_cancelled_before_admission(make: Callable[[int], Batcher]) -> None:
    batcher = make(2)
    pending = batcher.submit(
        _windows(1, 17), [_prompt(batcher.vocabulary)], GREEDY, should_stop=lambda: True
    )
    with pytest.raises(TaskCancelled):
        pending.result()
    assert batcher.steps == 0


def test_a_failed_step_fails_only_what_was_in_flight(make: Callable[[int], Batcher]) -> None:
    batcher = make(1)
    v = batcher.vocabulary
    decoder = batcher.decoder
    real_step = decoder.step
    fail = threading.Event()

    def step(count: int, max_position: int, **options: Any) -> Any:
        if fail.is_set():
            fail.clear()
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_step(count, max_position, **options)

    decoder.step = step  # type: ignore[method-assign]
    running = batcher.submit(
        _windows(1, 18), [_prompt(v)], DecodeOptions(beam_size=1, forced_length=100)
    )
    _wait_for(lambda: batcher.steps > 0, "the first step")
    waiting = batcher.submit(_windows(1, 19), [_prompt(v)], GREEDY)  # no free row: queued
    fail.set()
    with pytest.raises(RuntimeError, match="simulated"):
        running.result()
    (result,) = waiting.result()
    assert result.sequences_ids[0]
    (again,) = batcher.generate(_windows(1, 19), [_prompt(v)], GREEDY)
    assert again.sequences_ids == result.sequences_ids


def test_calls_run_on_the_batcher_thread_and_close_fails_the_rest(
    make: Callable[[int], Batcher],
) -> None:
    batcher = make(2)
    assert batcher.call(lambda: threading.current_thread().name) == "batcher"
    with pytest.raises(ZeroDivisionError):
        batcher.call(lambda: 1 / 0)
    encoded = _windows(2, 20)
    hidden = batcher.call(lambda: batcher.hidden(encoded))
    assert len(hidden) == 2
    assert hidden[0].shape == (TEST_ARCHITECTURE.max_source_positions, TEST_ARCHITECTURE.d_model)
    batcher.close()
    with pytest.raises(RuntimeError, match="unloaded"):
        batcher.submit(_windows(1, 0), [_prompt(batcher.vocabulary)], GREEDY)
