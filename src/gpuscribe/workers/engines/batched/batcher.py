"""One continuous batch per loaded model: every task's windows decode in the same steps.

Task threads call `generate` (and `detect_language`, `align`) and wait; one batcher thread owns
the device. It encodes waiting windows in batches, writes their cross-attention and rule state
into free cache rows, and steps every active row at once, a row inside its prompt being fed its
next prompt token; a window whose rows end frees them for the next waiting window: higher
priority first, then tasks of equal priority in turns (a task just begun is not queued behind
the rest of a long one), then first come. Tokens and beams are chosen on the device
(`choice.py`, `beams.py`), so the thread keeps `LOOKAHEAD` steps queued beyond the one it
catches up with. All device work happens on the batcher thread, which keeps CUDA graph capture
safe.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# the memory these bound is charged by that module
from gpuscribe.memory.batch import ENCODER_BATCH, READY_BATCHES
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.engines.batched.beams import BeamLayout, replay
from gpuscribe.workers.engines.batched.choice import (
    OUT_LOGPROB,
    OUT_NO_SPEECH,
    OUT_TOKEN,
    Choice,
    RowStates,
    forced_start,
    row_generates,
)
from gpuscribe.workers.engines.batched.crossattn import window_table
from gpuscribe.workers.engines.batched.decoder import StaticDecoder
from gpuscribe.workers.engines.batched.features import MelFeatures
from gpuscribe.workers.engines.batched.search import (
    NO_TIMESTAMP_RULES,
    DecodeOptions,
    Group,
    Row,
    Vocabulary,
)
from gpuscribe.workers.engines.batched.slots import SlotAllocator

log = logging.getLogger(__name__)

START_ROWS = 16  # free rows that make a start (one cross-attention fill for all) worth its cost
CANCEL_CHECK_STEPS = 8
LOOKAHEAD = 2  # steps queued on the device beyond the one the host is catching up with
STOP_POLL_SECONDS = 0.2  # how often a waiting task thread looks at its stop flag
# The batcher thread waits on the device every step, and task threads run meanwhile; with
# Python's default 5 ms switch interval it could wait that long for the interpreter lock each
# step once the device is done. A worker process that runs a batch switches threads sooner.
SWITCH_INTERVAL_SECONDS = 0.0002
# The decode steps run on a stream of higher priority than the encoder's side stream: a step is
# a few milliseconds of small kernels that every row waits for, an encoder batch is hundreds of
# milliseconds of large ones, and at equal priority each of the step's kernels queues behind
# the encoder's on the device.
DECODE_STREAM_PRIORITY = -1
STATS_SECONDS = 60.0  # how often a working batch logs what its steps did (`BatchCounters`)


class EncoderInput:
    """Windows to encode: mel features, or raw audio chunks (at most 30 s each) whose features
    the batcher computes on the device. Encoded on first use by the batcher thread and kept for
    the handle's lifetime (word alignment and language detection need the output again)."""

    def __init__(
        self,
        features: np.ndarray[Any, Any] | None = None,
        audio: list[np.ndarray[Any, Any]] | None = None,
        *,
        keep: bool = True,
    ) -> None:
        if (features is None) == (audio is None):
            raise ValueError("give either features or audio")
        self.features = features
        self.audio = audio
        self.keep = keep  # False: the encoder output is dropped once the window is in its rows
        count = len(audio) if audio is not None else int(features.shape[0])  # type: ignore[union-attr]
        self.hidden: list[Any] = [None] * count

    def __len__(self) -> int:
        return len(self.hidden)


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What CTranslate2's `WhisperGenerationResult` carries, for faster-whisper's code."""

    sequences_ids: list[list[int]]
    scores: list[float]
    no_speech_prob: float = 0.0


@dataclass(eq=False)
class _Request:
    priority: int
    order: int
    should_stop: Callable[[], bool]
    turn: int | None = None  # its first window's turn (`Batcher.submit`); None: a task's opening
    done: threading.Event = field(default_factory=threading.Event)
    results: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    pending: int = 0
    started_at: float | None = None  # when its first window entered the batch (epoch seconds)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.done.set()


@dataclass(frozen=True, slots=True)
class BatchCounters:
    """The batch's running totals at one moment, for a summary of the steps between two."""

    at: float  # time.monotonic()
    steps: int
    row_steps: int
    host_bound_steps: int
    beam_rows_chosen: int
    seconds: dict[str, float]

    def summary(self, earlier: BatchCounters) -> str | None:
        """What the steps since `earlier` did: how many, their rows, how many waited on the host,
        and the batcher thread's milliseconds a step by part ("select" includes the wait for
        the device). None when no step ran."""
        steps = self.steps - earlier.steps
        if steps <= 0:
            return None
        ms = {k: 1000 * (v - earlier.seconds.get(k, 0.0)) / steps for k, v in self.seconds.items()}
        rows = (self.row_steps - earlier.row_steps) / steps
        beams = (self.beam_rows_chosen - earlier.beam_rows_chosen) / steps
        host_bound = 100 * (self.host_bound_steps - earlier.host_bound_steps) / steps
        parts = ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
        return (
            f"{steps} steps in {self.at - earlier.at:.0f} s, {rows:.1f} rows a step"
            f" ({beams:.1f} of them beams), {host_bound:.0f}% waited on the host;"
            f" ms a step: {sum(ms.values()):.2f} ({parts})"
        )


_Rank = tuple[int, int, int, int, int]


def _rank(group: Group) -> _Rank:
    """A waiting window's place in line, best first: priority; then a task's opening window
    before any later one (a 30 s task begun now goes before the rest of a 20-minute one of the
    same priority); then the later windows by turn, a window of each task a round; then
    arrival."""
    request = group.request
    if request.turn is None:
        return (-request.priority, 0, 0, request.order, group.index)
    return (-request.priority, 1, request.turn + group.index, request.order, group.index)


class Pending:
    """Windows queued by `Batcher.submit`."""

    def __init__(self, request: _Request) -> None:
        self._request = request

    def done(self) -> bool:
        return self._request.done.is_set()

    @property
    def started_at(self) -> float | None:
        """When the first of these windows entered the batch (seconds since the epoch)."""
        return self._request.started_at

    def result(self) -> list[GenerationResult]:
        """The results, once every window has ended. A stop asked for while waiting ends the
        wait at once (windows still queued are skipped when their turn comes; windows in rows
        are dropped at the batcher's next check)."""
        request = self._request
        while not request.done.wait(STOP_POLL_SECONDS):
            if request.should_stop():
                request.fail(TaskCancelled("cancelled while waiting for the batch"))
        if request.error is not None:
            raise request.error
        return list(request.results)


@dataclass(eq=False)
class _Encoding:
    """Windows whose rows are reserved while the encoder runs on the side stream."""

    taken: list[tuple[Group, EncoderInput]]
    done: Any  # torch.cuda.Event


@dataclass(eq=False)
class _Launched:
    """A step queued on the device: its rows (as they were when it was launched), each row's
    input position, its beam windows, and the choice on its way to the host (each beam
    layout's record beside it)."""

    rows: list[Row]
    positions: list[int]
    layouts: list[BeamLayout]
    out: Any
    records: list[Any]
    done: Any  # torch.cuda.Event (None on the CPU)


@dataclass(eq=False)
class _Call:
    """A closure run on the batcher thread (language detection, alignment)."""

    run: Callable[[], Any]
    request: _Request


class Batcher:
    """The continuous batch of one model on one device."""

    def __init__(
        self,
        decoder: StaticDecoder,
        vocabulary: Vocabulary,
        n_mels: int,
        *,
        overlap_encoder: bool = True,
    ) -> None:
        import torch

        self._torch = torch
        self.decoder = decoder
        self._mel = MelFeatures(n_mels, decoder.device)
        self.vocabulary = vocabulary
        self._lock = threading.Condition()
        self._waiting: list[tuple[_Rank, Group, EncoderInput]] = []
        self._calls: list[_Call] = []
        self._rows: list[Row] = []
        self._order = itertools.count()
        self._closed = False
        self._states = RowStates(torch, decoder, vocabulary)
        self._in_flight: deque[_Launched] = deque()  # steps launched, not yet caught up with
        self._encoding: _Encoding | None = None
        self._ready: list[tuple[Group, EncoderInput]] = []  # encoded, waiting for free rows
        self._windows_stale = True  # rows started or moved since the decoder was told
        # A pooled cache's slots (`slots.py`): which window's audio is where.
        self._slots = (
            SlotAllocator(decoder.layout, decoder.batch_buckets) if decoder.layout else None
        )
        self._window_rows = self._free_rows()  # the most rows one window can take
        self._shared_windows = False  # some window has several rows (beams, samples)
        self._served: dict[int, int] = {}  # priority -> the latest turn taken to be encoded
        cuda = decoder.device.type == "cuda"
        self._encoder_stream = torch.cuda.Stream() if cuda else None  # type: ignore[no-untyped-call]
        self._side_stream = self._encoder_stream if overlap_encoder else None
        self._decode_priority = DECODE_STREAM_PRIORITY if cuda else 0
        self.lookahead = LOOKAHEAD
        self.steps = 0
        self.row_steps = 0  # rows stepped, summed over steps: / steps is the mean occupancy
        self.host_bound_steps = 0  # steps the device had finished before the host caught up
        self.beam_rows_chosen = 0  # beam rows the host chose for, summed over steps
        self.beam_rows_moved = 0  # of those, rows that took another row's cache
        self.grouped_steps = 0  # steps whose windows' rows attended to their audio together
        self.seconds: dict[str, float] = {"calls": 0.0, "admit": 0.0, "step": 0.0, "select": 0.0}
        self._logged = self.counters()  # the totals at the last summary in the log
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS))
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    # --- task threads -----------------------------------------------------------------------
    def generate(
        self,
        encoded: EncoderInput,
        prompts: list[list[int]],
        options: DecodeOptions,
        *,
        priority: int = 0,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[GenerationResult]:
        return self.submit(
            encoded, prompts, options, priority=priority, should_stop=should_stop
        ).result()

    def submit(
        self,
        encoded: EncoderInput,
        prompts: list[list[int]],
        options: DecodeOptions,
        *,
        priority: int = 0,
        turn: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Pending:
        """Queue windows for decoding and return at once; `Pending.result()` waits. By default
        they are a task's opening windows, which go before every later window of their
        priority; a task's later windows pass their `turn`: `next_turn` read when the task
        began, plus the window's index in the task."""
        self._check_open()  # before anything a closed batcher has let go of
        if len(prompts) != len(encoded):
            raise ValueError(f"{len(prompts)} prompts for {len(encoded)} windows")
        if options.rows > self._window_rows:
            raise ValueError(f"{options.rows} rows per window, the batch holds {self._window_rows}")
        request = _Request(priority, next(self._order), should_stop, turn)
        request.results = [None] * len(prompts)
        request.pending = len(prompts)
        groups = [self._group(request, i, p, options) for i, p in enumerate(prompts)]
        with self._lock:
            self._check_open()
            for group in groups:
                heapq.heappush(self._waiting, (_rank(group), group, encoded))
            self._lock.notify()
        return Pending(request)

    def counters(self) -> BatchCounters:
        """The running totals now (read from any thread; each is updated by the batcher's)."""
        return BatchCounters(
            time.monotonic(), self.steps, self.row_steps, self.host_bound_steps,
            self.beam_rows_chosen, dict(self.seconds),
        )  # fmt: skip

    def next_turn(self, priority: int) -> int:
        """The turn a task that begins now at `priority` adds its windows' indices to: the
        latest turn taken to be encoded, so that its later windows join the round being served
        and take turns with the windows of the tasks already running (a window of each task a
        round: no task of the priority waits for the whole of another)."""
        with self._lock:
            return self._served.get(priority, 0)

    def call(
        self, run: Callable[[], Any], *, should_stop: Callable[[], bool] = lambda: False
    ) -> Any:
        """Run `run` on the batcher thread between steps and return its result."""
        request = _Request(0, next(self._order), should_stop)
        with self._lock:
            self._check_open()
            self._calls.append(_Call(run, request))
            self._lock.notify()
        self._wait(request)
        return request.results[0]

    def hidden(self, encoded: EncoderInput) -> list[Any]:
        """Encoder output of every window of `encoded` (on the batcher thread only)."""
        self._encode([(encoded, i) for i, h in enumerate(encoded.hidden) if h is None])
        return encoded.hidden

    def capture_graphs(self) -> None:
        """Capture the step and the token choice at every shape (CUDA; on the batcher thread,
        through `call`, when the model loads)."""
        self.decoder.capture_all()
        self._states.capture_all()

    def set_decode_priority(self, priority: int) -> None:
        """Run the decode steps on a new stream of `priority` (CUDA; lower is sooner, 0 is the
        encoder's). On the batcher thread, through `call`; benchmarks compare priorities."""
        torch = self._torch
        if self.decoder.device.type != "cuda":
            return
        stream = torch.cuda.Stream(priority=priority)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        torch.cuda.set_stream(stream)
        self._decode_priority = priority

    def set_overlap_encoder(self, overlap: bool) -> None:
        """Encode on the side stream while steps run (True), or between steps on the steps'
        stream. On the batcher thread, through `call`, with no encoding in progress."""
        if self._encoding is not None:
            raise RuntimeError("an encoding is in progress")
        self._side_stream = self._encoder_stream if overlap else None

    def close(self) -> None:
        """Stop the batcher's thread, then drop what it holds on the device (its decoder's
        cache, captured steps and their pool, the encoded windows and row states): an unloaded
        model gives its memory back at once, not whenever a garbage collection finds the
        references between its parts. Calibration measured a worker still holding 17 GiB of an
        unloaded large-v3 before this."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)
        if "decoder" not in vars(self):
            return  # closed and released before
        if self._thread.is_alive():
            log.warning("the batcher's thread did not stop within 30 s: its memory stays held")
            return
        self.decoder.release()
        kept = {"_lock": self._lock, "_closed": True, "_thread": self._thread,
                "vocabulary": self.vocabulary}  # fmt: skip
        vars(self).clear()
        vars(self).update(kept)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the model was unloaded")

    def _wait(self, request: _Request) -> None:
        Pending(request).result()

    def _group(self, request: _Request, index: int, prompt: list[int], o: DecodeOptions) -> Group:
        v = self.vocabulary
        if v.sot not in prompt:
            raise ValueError("the prompt has no <|startoftranscript|> token")
        timestamps = prompt[-1] != v.no_timestamps
        limit = min(o.max_length // 2, o.max_length - (len(prompt) - 1))
        if len(prompt) >= self.decoder.shape.max_len:
            raise ValueError(f"a prompt of {len(prompt)} tokens leaves no room to decode")
        limit = max(1, min(limit, self.decoder.shape.max_len - len(prompt)))
        if o.forced_length:
            limit = min(limit, o.forced_length)
        return Group(
            request, index, list(prompt), o, timestamps, limit,
            sot_position=prompt.index(v.sot), forced_start=forced_start(prompt, v.sot),
        )  # fmt: skip

    # --- the batcher thread -----------------------------------------------------------------
    def _loop(self) -> None:
        if self.decoder.device.type == "cuda":  # this thread's work waits on the loader's first
            self.set_decode_priority(self._decode_priority)
        while True:
            with self._lock:
                while not (
                    self._closed
                    or self._waiting
                    or self._calls
                    or self._rows
                    or self._encoding
                    or self._ready
                    or self._in_flight
                ):
                    self._lock.wait()
                if self._closed:
                    self._fail_everything(RuntimeError("the model was unloaded"))
                    return
                calls, self._calls = self._calls, []
            try:
                started = time.perf_counter()
                for call in calls:
                    self._run_call(call)
                admitted = time.perf_counter()
                self._admit()
                self.seconds["calls"] += admitted - started
                self.seconds["admit"] += time.perf_counter() - admitted
                if self._rows:
                    self._launch()
                ahead = self.lookahead if self._rows else 0
                while len(self._in_flight) > ahead:
                    self._collect()
                self._log_counters()
            except Exception as exc:  # out of memory, a kernel failure: fail what is in flight
                log.exception("the batch failed; failing its windows")
                self._fail_rows(exc)

    def _log_counters(self) -> None:
        """Every `STATS_SECONDS` while the batch works, a line of what its steps did: an
        operator (or a benchmark's server log) sees its occupancy and where its time goes."""
        if time.monotonic() - self._logged.at < STATS_SECONDS:
            return
        now = self.counters()
        line = now.summary(self._logged)
        if line is not None:
            log.info("batch: %s", line)
        self._logged = now

    def _run_call(self, call: _Call) -> None:
        try:
            call.request.results = [call.run()]
        except Exception as exc:
            call.request.error = exc
        call.request.done.set()

    def _free_rows(self) -> int:
        """Rows a window could take now."""
        if self._slots is not None:
            return self._slots.free_rows(len(self._rows))
        return self.decoder.rows - len(self._rows)

    def _fit(self, windows: list[int]) -> bool:
        """Whether windows of these row counts can start now, together."""
        if self._slots is not None:
            return self._slots.fits(len(self._rows), windows)
        return sum(windows) <= self._free_rows()

    def _admit(self) -> None:
        """Move finished encodings to the ready windows, start ready windows in free rows, and
        keep the encoder one batch ahead of the rows: while the steps run, the next windows are
        encoded (on a second CUDA stream where `overlap_encoder`), so that a row that ends is
        refilled within a few steps instead of after a whole encoder batch. What is held ahead
        is counted in rows (a window of 5 beams takes 5): a window that arrives with a better
        rank than those already encoded waits for at most about `ENCODER_BATCH` rows to start
        before it, not for as many windows."""
        pending = self._encoding
        if pending is not None and self._encoded(pending):
            self._encoding = None
            self._ready.extend(pending.taken)
        self._start_ready()
        if self._encoding is None:
            self._encode_ahead()
        if not self._rows and self._ready and self._encoding is None:
            self._start_ready()  # the CPU (no side stream): what was just encoded starts now

    def _ready_rows(self) -> int:
        return sum(g.options.rows for g, _ in self._ready)

    def _start_ready(self) -> None:
        """Start the best ready windows (by `_rank`) that fit the free rows, once enough rows
        are free to make the start worth its prompt pass (`START_ROWS`, an eighth of a small
        batch, or every ready row when fewer are ready), or at once when nothing decodes."""
        if not self._ready:
            return
        free = self._free_rows()
        worth = min(START_ROWS, max(1, self.decoder.rows // 8), self._ready_rows())
        if self._rows and free < worth:
            return
        self._ready.sort(key=lambda item: _rank(item[0]))
        starting: list[tuple[Group, EncoderInput]] = []
        kept: list[tuple[Group, EncoderInput]] = []
        sizes: list[int] = []
        for group, encoded in self._ready:
            if not kept and self._fit([*sizes, group.options.rows]):
                sizes.append(group.options.rows)
                starting.append((group, encoded))
            else:
                kept.append((group, encoded))
        self._ready = kept
        self._start(starting)

    def _encode_ahead(self) -> None:
        """Encode the next waiting windows into the ready list (through `_encoding` while the
        side stream runs). Windows whose encoding fails fail with it (they left the queue)."""
        room = self._room_ahead()
        taken = self._take(room) if room else []
        if not taken:
            return
        try:
            if self._side_stream is None:
                self._encode_all(taken)
                self._ready.extend(taken)
                return
            torch = self._torch
            self._side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side_stream):
                self._encode_all(taken)
                done = torch.cuda.Event()
                done.record(self._side_stream)
            self._encoding = _Encoding(taken, done)
        except Exception as exc:
            for group, _ in taken:
                group.request.fail(exc)
            raise

    def _encoded(self, pending: _Encoding) -> bool:
        """Whether `pending`'s encoder output is ready; then the decode stream waits on it, and
        its tensors are marked as used there (they were allocated on the side stream)."""
        if not pending.done.query() and (self._rows or self._ready):
            return False  # the batch has work meanwhile: step it, look again after
        torch = self._torch
        current = torch.cuda.current_stream()
        current.wait_event(pending.done)
        for group, encoded in pending.taken:
            hidden = encoded.hidden[group.index]
            if hidden is not None:
                hidden.record_stream(current)
        return True

    def _room_ahead(self) -> int:
        """How many waiting windows to encode now: a batch while fewer than `ENCODER_BATCH`
        rows are ready, or when the best waiting window outranks every ready one (an urgent
        task must not wait for the windows encoded before it to start); never more than the
        `READY_BATCHES` encoder batches of output the ledger charges."""
        room = min(ENCODER_BATCH, READY_BATCHES * ENCODER_BATCH - len(self._ready))
        if room <= 0 or self._ready_rows() < ENCODER_BATCH:
            return max(room, 0)
        with self._lock:
            best = self._waiting[0][0] if self._waiting else None
        outranks = best is not None and best < min(_rank(g) for g, _ in self._ready)
        return room if outranks else 0

    def _take(self, limit: int) -> list[tuple[Group, EncoderInput]]:
        """The next waiting windows, best first: one encoder batch of at most `limit` windows,
        and of `ENCODER_BATCH` rows once the first is taken (beams make a window several)."""
        with self._lock:
            taken: list[tuple[Group, EncoderInput]] = []
            rows = 0
            while self._waiting and len(taken) < limit and rows < ENCODER_BATCH:
                (_, later, turn, _, _), group, encoded = heapq.heappop(self._waiting)
                taken.append((group, encoded))
                rows += group.options.rows
                if later:
                    served = self._served
                    priority = group.request.priority
                    served[priority] = max(served.get(priority, turn), turn)
        return [(g, e) for g, e in taken if not self._cancelled(g)]

    def _cancelled(self, group: Group) -> bool:
        request = group.request
        if request.error is not None:
            return True
        if request.should_stop():
            request.fail(TaskCancelled("cancelled while decoding"))
            return True
        return False

    def _start(self, taken: list[tuple[Group, EncoderInput]]) -> None:
        """Put encoded windows into rows: cross-attention, rule state, the prompt's head where
        it begins before the tokens fed as steps. No wait for the device: the next step feeds
        the rows their prompts. Encoder output no caller will ask for again is let go here (it
        is 3.8 MB a window for large-v3)."""
        torch = self._torch
        taken = [(g, e) for g, e in taken if not self._cancelled(g)]
        if not taken:
            return
        first_row = len(self._rows)
        new_rows: list[Row] = []
        windows: list[int] = []  # each new row's window, an index into `taken`
        now = time.time()
        for window, (group, _) in enumerate(taken):
            if group.request.started_at is None:
                group.request.started_at = now
            for _ in range(group.options.rows):
                row = Row(group, position=group.forced_start)
                group.rows.append(row)
                new_rows.append(row)
                windows.append(window)
        targets = list(range(first_row, first_row + len(new_rows)))
        upload = self._states.upload
        hidden = torch.stack([encoded.hidden[group.index] for group, encoded in taken])
        if self._slots is not None:  # pooled: a window's audio, once, in its slot
            for group, _ in taken:
                group.slot = self._slots.take()
            self.decoder.fill_cross(upload(np.array([g.slot for g, _ in taken])), hidden)
        else:  # beams: one window's keys and values, computed once, copied to each row
            shared = len(windows) > len(taken)
            self.decoder.fill_cross(
                upload(np.array(targets)), hidden, upload(np.array(windows)) if shared else None
            )
        del hidden
        for group, encoded in taken:
            if not encoded.keep:
                encoded.hidden[group.index] = None
        self._states.start(targets, new_rows)
        self._prefill_heads(new_rows, first_row)
        self._rows.extend(new_rows)
        self._windows_stale = True

    def _encode_all(self, taken: list[tuple[Group, EncoderInput]]) -> None:
        """Encode every window about to start that has no encoder output yet."""
        self._encode([(e, g.index) for g, e in taken if e.hidden[g.index] is None])

    def _encode(self, windows: list[tuple[EncoderInput, int]]) -> None:
        """Encoder output for `windows`, in batches of up to `ENCODER_BATCH` that may mix
        tasks; features from raw audio are computed on the device first."""
        torch = self._torch
        for first in range(0, len(windows), ENCODER_BATCH):
            chunk = windows[first : first + ENCODER_BATCH]
            from_audio = [(e, i) for e, i in chunk if e.audio is not None]
            from_features = [(e, i) for e, i in chunk if e.audio is None]
            parts = []
            if from_audio:
                parts.append(self._mel([e.audio[i] for e, i in from_audio]))  # type: ignore[index]
            if from_features:
                stacked = np.stack([e.features[i] for e, i in from_features])  # type: ignore[index]
                parts.append(self._states.upload(stacked))  # no wait for the queued steps
            out = self.decoder.encode(torch.cat(parts))
            for k, (e, i) in enumerate(from_audio + from_features):
                e.hidden[i] = out[k]

    def _prefill_heads(self, rows: list[Row], first_row: int) -> None:
        """Run the prompt positions before `forced_start` (a previous-text prompt) in one pass
        per length; where that head holds <|startoftranscript|>, its logits give the
        no-speech probability."""
        by_start: dict[int, list[int]] = {}
        for offset, row in enumerate(rows):
            start = row.group.forced_start
            if start > 0:
                by_start.setdefault(start, []).append(offset)
        upload = self._states.upload
        for start, offsets in by_start.items():
            prompts = [rows[o].group.prompt for o in offsets]
            sot_at = [rows[o].group.sot_position for o in offsets]
            cache_rows = upload(np.array([first_row + o for o in offsets]))
            at = upload(np.array([[min(p, start - 1)] for p in sot_at]))
            heads_tokens = upload(np.array([p[:start] for p in prompts]))
            slots = None
            if self._slots is not None:
                slots = upload(np.array([rows[o].group.slot for o in offsets]))
            logits = self.decoder.prefill(cache_rows, heads_tokens, at=at, slots=slots)
            heads = [k for k, p in enumerate(sot_at) if p < start]
            if heads:
                index = upload(np.array(heads))
                self._states.set_no_speech(cache_rows[index], logits[index, 0])

    # --- one step, and catching up with it --------------------------------------------------
    def _launch(self) -> None:
        """Queue a step over every row and its token choice, beams included, without waiting
        for either."""
        rows = list(self._rows)
        n = len(rows)
        positions = [r.position for r in rows]
        started = time.perf_counter()
        grouped = self._grouped(rows)
        logits = self.decoder.step(n, max(positions), grouped=grouped)
        self.grouped_steps += grouped
        layouts = self._beam_layouts(rows, positions)
        sampling = any(r.group.options.sampling for r in rows)
        choice = self._states.choose(logits, n, sampling=sampling, beams=layouts)
        if layouts:
            end = 1 + max(p for layout in layouts for p in layout.positions)
            for moves in choice.moves:
                self.decoder.move_beams(moves.parents, moves.rows, moves.lengths, moves.moved, end)
        last = self._states.max_position
        for row in rows:
            row.position = min(row.position + 1, last)
        self._in_flight.append(_Launched(rows, positions, layouts, *self._to_host(choice)))
        self.steps += 1
        self.row_steps += n
        self.seconds["step"] += time.perf_counter() - started

    def _grouped(self, rows: list[Row]) -> bool:
        """Whether the step attends with each window's rows together (`crossattn.py`): where
        the decoder can and some window has several rows, and always in a pooled cache (each
        window's audio is only in its slot). The decoder learns where the windows' rows are
        when they have started or moved since it last did."""
        if self.decoder.grouped is None:
            return False
        if self._windows_stale:
            by_window: dict[Group, list[int]] = {}  # a window's rows, in order of first row
            for i, row in enumerate(rows):
                by_window.setdefault(row.group, []).append(i)
            windows = list(by_window.values())
            self._shared_windows = self._slots is not None or any(len(w) > 1 for w in windows)
            if self._shared_windows:
                slots = [g.slot for g in by_window] if self._slots is not None else None
                table = window_table(windows, self.decoder.rows, slots)
                self.decoder.set_windows(*(self._states.upload(t) for t in table))
            self._windows_stale = False
        return self._shared_windows

    def _beam_layouts(self, rows: list[Row], positions: list[int]) -> list[BeamLayout]:
        """Where the beam windows among `rows` sit, a layout per beam size (`beams.py`)."""
        where: dict[int, int] = {}
        groups: dict[int, dict[int, Group]] = {}
        for i, row in enumerate(rows):
            beam = row.group.options.beam_size
            if beam > 1:
                where[id(row)] = i
                groups.setdefault(beam, {}).setdefault(id(row.group), row.group)
        layouts = []
        for beam, by_id in groups.items():
            windows = list(by_id.values())
            index = np.array([[where[id(r)] for r in g.rows] for g in windows], dtype=np.int64)
            starts = [positions[where[id(g.rows[0])]] for g in windows]
            layouts.append(BeamLayout(beam, windows, self._states.upload(index), starts))
        return layouts

    def _to_host(self, choice: Choice) -> tuple[Any, list[Any], Any]:
        """The choice copied to the host as the device gets to it, and the event that says so."""
        torch = self._torch
        if self.decoder.device.type != "cuda":
            return choice.out.clone(), [r.clone() for r in choice.records], None
        out = choice.out.to("cpu", non_blocking=True)  # into pinned memory
        records = [r.to("cpu", non_blocking=True) for r in choice.records]
        done = torch.cuda.Event()
        done.record()
        return out, records, done

    def _collect(self) -> None:
        """Catch up with the oldest launched step: each row's chosen token joins its
        hypothesis, each beam window replays the device's choice, finished windows close,
        their rows are freed."""
        launched = self._in_flight.popleft()
        started = time.perf_counter()
        if launched.done is not None:
            if launched.done.query():  # the device finished first: it waited on the host
                self.host_bound_steps += 1
            launched.done.synchronize()
        out = launched.out.numpy()
        closing: list[Group] = []
        for i, row in enumerate(launched.rows):
            group = row.group
            position = launched.positions[i]
            if row.finished or group.done or not row_generates(row, position):
                continue
            if position + 1 == len(group.prompt) and group.options.return_no_speech_prob:
                group.no_speech_prob = float(out[i, OUT_NO_SPEECH])
            if group.options.beam_size > 1:
                continue
            logprob = float(out[i, OUT_LOGPROB])
            if math.isnan(logprob):
                self._not_a_number(group)
                continue
            self._advance(row, int(out[i, OUT_TOKEN]), logprob)
            if row.finished:
                closing.append(group)
        for group in closing:
            if not group.done and all(r.finished for r in group.rows):
                self._close(group)
        for layout, record in zip(launched.layouts, launched.records, strict=True):
            self._replay(layout, record.numpy())
        if self.steps % CANCEL_CHECK_STEPS == 0:
            for group in {id(r.group): r.group for r in self._rows}.values():
                if self._cancelled(group):
                    self._drop(group)
        self._compact()
        self.seconds["select"] += time.perf_counter() - started

    def _replay(self, layout: BeamLayout, record: np.ndarray[Any, Any]) -> None:
        """The device's beam choice of one step, for the windows of `layout` that chose in it
        (`beams.replay`); a window whose hypotheses are complete closes."""
        v = self.vocabulary
        for w, group in enumerate(layout.groups):
            if group.done or layout.positions[w] + 1 < len(group.prompt):
                continue
            if math.isnan(record[w, 0, 0]):  # the best candidate's score
                self._not_a_number(group)
                continue
            moved = replay(group, record[w].tolist(), v.eot, v.timestamp_begin)
            if moved < 0:
                self._close(group)
                continue
            self.beam_rows_chosen += layout.beam
            self.beam_rows_moved += moved

    def _advance(self, row: Row, token: int, logprob: float) -> None:
        if row.finished:
            return
        v = self.vocabulary
        group = row.group
        row.logprob += logprob
        if token == v.eot:
            row.finished = True
            group.finish(row.tokens, row.logprob)
            return
        row.tokens.append(token)
        if token >= v.timestamp_begin:
            row.last_timestamp = token
        row.next_token = token
        # A forced length ends with the end token the device forces after it; one more token
        # means the device could not (its logits are not numbers), and the row ends anyway.
        limit = group.max_new_tokens + (1 if group.options.forced_length else 0)
        if len(row.tokens) >= limit:
            row.finished = True
            group.finish(row.tokens, row.logprob)

    # --- ending windows ---------------------------------------------------------------------
    def _close(self, group: Group) -> None:
        if group.done:
            return
        group.done = True
        for row in group.rows:
            row.finished = True
        request = group.request
        best = group.best()
        result = GenerationResult(
            sequences_ids=[h.tokens for h in best],
            scores=[h.normalized for h in best],
            no_speech_prob=group.no_speech_prob,
        )
        request.results[group.index] = result
        request.pending -= 1
        if request.pending == 0:
            request.done.set()

    def _not_a_number(self, group: Group) -> None:
        """A window whose scores are not numbers (NaN) fails its task with a clear error:
        its tokens would be noise, and a forced end token could never win. Its rows' cache is
        cleared (`StaticDecoder.clear_rows`) after the steps already queued over it."""
        log.error("a window's scores are not numbers: failing its task")
        rows = [i for i, row in enumerate(self._rows) if row.group is group]
        if rows:
            self.decoder.clear_rows(self._states.upload(np.array(rows)), group.slot)
        group.request.fail(
            RuntimeError(
                "the model's output is not a number (NaN): its weights or its input are "
                "broken, or its compute type overflows"
            )
        )
        self._drop(group)

    def _drop(self, group: Group) -> None:
        group.done = True
        for row in group.rows:
            row.finished = True

    def _compact(self) -> None:
        """Remove finished rows, moving the last live rows into the holes (one copy)."""
        rows = self._rows
        keep = [r for r in rows if not (r.finished or r.group.done)]
        if len(keep) == len(rows):
            return
        n = len(keep)
        position = {id(r): i for i, r in enumerate(rows)}
        holes = [i for i in range(n) if rows[i].finished or rows[i].group.done]
        movers = [r for r in rows[n:] if not (r.finished or r.group.done)]
        if movers:
            upload = self._states.upload
            sources = upload(np.array([position[id(r)] for r in movers]))
            targets = upload(np.array(holes))
            self.decoder.copy_rows(sources, targets)
            self._states.move(sources, targets)
        new = rows[:n]
        for hole, mover in zip(holes, movers, strict=True):
            new[hole] = mover
        self._rows = new
        self._windows_stale = True
        if self._slots is not None:
            self._free_slots(rows, keep)

    def _free_slots(self, before: list[Row], after: list[Row]) -> None:
        """Give back the slots of windows that have no row left. Steps queued ahead that still
        read one come before any fill that reuses it, on the same stream."""
        assert self._slots is not None
        live = {id(r.group) for r in after}
        for row in before:
            group = row.group
            if group.slot >= 0 and id(group) not in live:
                self._slots.give(group.slot)
                group.slot = -1

    def _fail_rows(self, error: BaseException) -> None:
        for row in self._rows:
            row.group.request.fail(error)
        self._rows = []
        self._windows_stale = True
        if self._slots is not None:
            self._slots.clear()
        self._in_flight.clear()
        if self._encoding is not None:
            for group, _ in self._encoding.taken:
                group.request.fail(error)
            self._encoding = None

    def _fail_everything(self, error: BaseException) -> None:
        self._fail_rows(error)
        for group, _ in self._ready:
            group.request.fail(error)
        self._ready = []
        for _, group, _ in self._waiting:
            group.request.fail(error)
        self._waiting = []
        for call in self._calls:
            call.request.fail(error)
        self._calls = []


__all__ = ["NO_TIMESTAMP_RULES", "Batcher", "EncoderInput", "GenerationResult", "Pending"]
