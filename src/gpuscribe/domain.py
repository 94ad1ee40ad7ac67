"""The nouns every part of gpuscribe shares: tasks, their options, transcripts.

Pure data, no I/O. Every other package imports from here; this module imports nothing of
gpuscribe's own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

_Converters = Mapping[str, Callable[[Any], Any]]


def _known_fields(cls: type[Any], data: Mapping[str, Any], convert: _Converters) -> dict[str, Any]:
    """Keyword arguments for the dataclass `cls` from `data`: each field that `data` holds,
    through its converter in `convert` (as it is where there is none). A field that `data` lacks
    keeps the default its dataclass declares (stated there once, never again here); a required
    one that it lacks raises KeyError; keys that name no field are ignored."""
    return {
        f.name: convert.get(f.name, _as_given)(data[f.name])
        for f in fields(cls)
        if f.name in data or _required(f)
    }


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _as_given(value: Any) -> Any:
    return value


class TaskState(enum.StrEnum):
    """Lifecycle of a task. `completed`, `failed` and `cancelled` are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})


class Priority(enum.IntEnum):
    """Lower value runs sooner. Compared as integers, never as strings as the design's sketch
    did (docs/DESIGN.md, Priorities and ageing)."""

    URGENT = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        """Accept `urgent|high|normal|low` (any case) or the integer value."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, int):
            try:
                return cls(value)
            except ValueError:
                pass
        else:
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        names = ", ".join(p.label for p in cls)
        raise ValueError(f"invalid priority {value!r}: expected one of {names}")


class TaskKind(enum.StrEnum):
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    """What the client asked for. Everything the engine needs besides the audio."""

    model: str = "tiny.en"
    engine: str = "faster-whisper"
    task: TaskKind = TaskKind.TRANSCRIBE
    language: str | None = None
    beam_size: int = 5
    batch_size: int = 1
    compute_type: str = "default"
    word_timestamps: bool = False
    vad_filter: bool = False
    initial_prompt: str | None = None
    temperature: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "engine": self.engine,
            "task": self.task.value,
            "language": self.language,
            "beam_size": self.beam_size,
            "batch_size": self.batch_size,
            "compute_type": self.compute_type,
            "word_timestamps": self.word_timestamps,
            "vad_filter": self.vad_filter,
            "initial_prompt": self.initial_prompt,
            "temperature": self.temperature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TranscriptionOptions:
        """Options as `to_dict` wrote them; an absent key takes its field's default."""
        return cls(**_known_fields(cls, data, _OPTION_CONVERTERS))


_OPTION_CONVERTERS: _Converters = {
    "model": str,
    "engine": str,
    "task": TaskKind,
    "beam_size": int,
    "batch_size": int,
    "compute_type": str,
    "word_timestamps": bool,
    "vad_filter": bool,
    "temperature": float,
}


@dataclass(frozen=True, slots=True)
class NewTask:
    """A validated submission, ready to be stored. The audio file already lies at `audio_path`,
    under a name the service chose."""

    priority: Priority
    options: TranscriptionOptions
    audio_path: str
    audio_seconds: float
    audio_format: str
    original_filename: str | None = None
    idempotency_key: str | None = None
    max_attempts: int = 3


@dataclass(slots=True)
class Task:
    """A task as the store holds it. Times are seconds since the epoch (UTC)."""

    id: str
    state: TaskState
    priority: Priority
    options: TranscriptionOptions
    audio_path: str
    audio_seconds: float
    audio_format: str
    created_at: float
    original_filename: str | None = None
    idempotency_key: str | None = None
    attempts: int = 0
    max_attempts: int = 3
    progress: float = 0.0
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    node: str | None = None
    memory_estimate_bytes: int | None = None
    memory_peak_bytes: int | None = None
    error: str | None = None
    wait_reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float = 0.0
    lease_token: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One line of a task's history: a state change or a notable step."""

    task_id: str
    at: float
    state: TaskState
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    word: str
    probability: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Word:
        return cls(**_known_fields(cls, data, _WORD_CONVERTERS))


_WORD_CONVERTERS: _Converters = {"start": float, "end": float, "word": str, "probability": float}


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    tokens: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        """A segment as `Transcript.to_dict` wrote it; an absent key takes its field's default."""
        return cls(**_known_fields(cls, data, _SEGMENT_CONVERTERS))


_SEGMENT_CONVERTERS: _Converters = {
    "id": int,
    "start": float,
    "end": float,
    "text": str,
    "words": lambda words: tuple(Word.from_dict(w) for w in words),
    "avg_logprob": float,
    "no_speech_prob": float,
    "compression_ratio": float,
    "temperature": float,
    "tokens": lambda tokens: tuple(int(t) for t in tokens),
}


@dataclass(frozen=True, slots=True)
class Transcript:
    """An engine's output. `simulated` and `benchmark_only` mark outputs that are not real
    transcripts (simulated GPUs; random-weight models)."""

    text: str
    language: str | None = None  # None: not known
    duration: float = 0.0
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    task: TaskKind = TaskKind.TRANSCRIBE
    simulated: bool = False
    benchmark_only: bool = False
    # When the engine's first decode step for this audio ran (seconds since the epoch), where
    # the engine knows it: the task's history records it; not part of the result.
    decoding_started_at: float | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "duration": self.duration,
            "task": self.task.value,
            "simulated": self.simulated,
            "benchmark_only": self.benchmark_only,
            "segments": [
                {
                    "id": s.id,
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "words": [
                        {
                            "start": w.start,
                            "end": w.end,
                            "word": w.word,
                            "probability": w.probability,
                        }
                        for w in s.words
                    ],
                    "avg_logprob": s.avg_logprob,
                    "no_speech_prob": s.no_speech_prob,
                    "compression_ratio": s.compression_ratio,
                    "temperature": s.temperature,
                    "tokens": list(s.tokens),
                }
                for s in self.segments
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transcript:
        """A transcript as `to_dict` wrote it; an absent key takes its field's default."""
        return cls(**_known_fields(cls, data, _TRANSCRIPT_CONVERTERS))


_TRANSCRIPT_CONVERTERS: _Converters = {
    "text": str,
    "duration": float,
    "segments": lambda segments: tuple(Segment.from_dict(s) for s in segments),
    "task": TaskKind,
    "simulated": bool,
    "benchmark_only": bool,
}


class InvalidRequest(ValueError):
    """Bad client input: the API answers 4xx with this message, never retried."""

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
