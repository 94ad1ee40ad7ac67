"""Pydantic models: the JSON the API answers (and documents in OpenAPI) and the form fields it
accepts. Conversion from domain objects lives here too, so the routes stay short."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpuscribe.api.backend import CalibrationRow, DeviceTrace, DeviceView
from gpuscribe.api.formats import DEFAULT_LINE_COUNT, DEFAULT_LINE_WIDTH
from gpuscribe.domain import Priority, Task, TaskEvent, TaskState
from gpuscribe.memory.types import MemoryEstimate
from gpuscribe.memory.warning import MemoryWarning

StateName = Literal["queued", "running", "completed", "failed", "cancelled"]
PriorityName = Literal["urgent", "high", "normal", "low"]


def iso_time(seconds: float | None) -> str | None:
    """Seconds since the epoch -> ISO 8601 UTC with milliseconds (`...Z`)."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- errors -----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- tasks ------------------------------------------------------------------------------------
class OptionsOut(BaseModel):
    model: str
    engine: str
    task: Literal["transcribe", "translate"]
    language: str | None
    beam_size: int
    batch_size: int
    compute_type: str
    word_timestamps: bool
    vad_filter: bool
    initial_prompt: str | None
    temperature: float


class EventOut(BaseModel):
    at: str
    state: StateName
    detail: str | None

    @classmethod
    def of(cls, event: TaskEvent) -> EventOut:
        return cls(at=iso_time(event.at) or "", state=event.state.value, detail=event.detail)


class TaskOut(BaseModel):
    id: str
    state: StateName
    priority: PriorityName
    model: str
    engine: str
    gpu: int | None = Field(description="Index of the device running or that ran the task.")
    gpu_uuid: str | None
    node: str | None
    progress: float = Field(ge=0.0, le=1.0)
    audio_seconds: float
    audio_format: str
    original_filename: str | None
    memory_estimate_bytes: int | None
    memory_peak_bytes: int | None
    attempts: int
    max_attempts: int
    error: str | None = Field(description="Why the task failed (only when it has failed).")
    last_error: str | None = Field(
        description="The error of an earlier attempt, for a task that was retried and is "
        "queued, running or completed since."
    )
    wait_reason: str | None
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    options: OptionsOut
    history: list[EventOut] | None = Field(
        default=None, description="State changes, oldest first (only on GET of one task)."
    )

    @classmethod
    def of(cls, task: Task, history: list[TaskEvent] | None = None) -> TaskOut:
        options = task.options.to_dict()
        failed = task.state is TaskState.FAILED
        return cls(
            id=task.id,
            state=task.state.value,
            priority=task.priority.label,  # type: ignore[arg-type]
            model=task.options.model,
            engine=task.options.engine,
            gpu=task.gpu_index,
            gpu_uuid=task.gpu_uuid,
            node=task.node,
            progress=min(1.0, max(0.0, task.progress)),
            audio_seconds=task.audio_seconds,
            audio_format=task.audio_format,
            original_filename=task.original_filename,
            memory_estimate_bytes=task.memory_estimate_bytes,
            memory_peak_bytes=task.memory_peak_bytes,
            attempts=task.attempts,
            max_attempts=task.max_attempts,
            error=task.error if failed else None,
            last_error=None if failed else task.error,
            wait_reason=task.wait_reason,
            cancel_requested=task.cancel_requested,
            created_at=iso_time(task.created_at) or "",
            started_at=iso_time(task.started_at),
            finished_at=iso_time(task.finished_at),
            options=OptionsOut(**options),
            history=None if history is None else [EventOut.of(e) for e in history],
        )


class TaskList(BaseModel):
    tasks: list[TaskOut]


class QueueOut(BaseModel):
    state: dict[str, int] = Field(description="Tasks by state (every state, zeros included).")
    priority: dict[str, int] = Field(description="Queued tasks by priority.")
    queued: int
    max_queue_length: int


def queue_out(by_state: dict[str, int], by_priority: dict[str, int], limit: int) -> QueueOut:
    states = {s.value: int(by_state.get(s.value, 0)) for s in TaskState}
    priorities = {p.label: int(by_priority.get(p.label, 0)) for p in Priority}
    return QueueOut(
        state=states, priority=priorities, queued=states["queued"], max_queue_length=limit
    )


# --- devices and calibration ------------------------------------------------------------------
class MemoryWarningOut(BaseModel):
    condition: Literal["used_high", "foreign_growth"] = Field(
        description="used_high: used memory (every process's) passed the warning level; "
        "foreign_growth: other processes' memory grew while gpuscribe's tasks ran."
    )
    since: str = Field(description="When the episode began (ISO 8601).")
    message: str

    @classmethod
    def of(cls, warning: MemoryWarning | None) -> MemoryWarningOut | None:
        if warning is None:
            return None
        since = iso_time(warning.since) or ""
        return cls(condition=warning.condition.value, since=since, message=warning.message)


class GpuOut(BaseModel):
    index: int
    uuid: str
    name: str
    kind: str
    memory_total_bytes: int
    memory_used_bytes: int = Field(description="As the device reports it, other processes too.")
    memory_free_bytes: int
    memory_reserved_bytes: int = Field(description="What gpuscribe has admitted on the device.")
    memory_cap_bytes: int
    tasks_running: int
    max_tasks: int
    utilization_percent: float | None
    memory_utilization_percent: float | None
    temperature_c: float | None
    power_watts: float | None
    compute_capability: str | None
    driver_version: str | None
    resident_models: list[str]
    draining: bool
    healthy: bool
    error: str | None
    read_at: str | None
    node: str | None = Field(default=None, description="The node that drives the device.")
    heartbeat_at: str | None = Field(default=None, description="That node's last heartbeat.")
    memory_warning: MemoryWarningOut | None = Field(
        default=None,
        description="The memory early warning the device is in, if any: while it lasts no new "
        "task is admitted onto it (settings memory_warning_*).",
    )

    @classmethod
    def of(cls, view: DeviceView) -> GpuOut:
        r = view.reading
        cc = r.compute_capability
        capability = None if cc is None else f"{cc[0]}.{cc[1]}"
        return cls(
            index=r.index,
            uuid=r.uuid,
            name=r.name,
            kind=r.kind.value,
            memory_total_bytes=r.memory_total_bytes,
            memory_used_bytes=r.memory_used_bytes,
            memory_free_bytes=r.memory_free_bytes,
            memory_reserved_bytes=view.memory_reserved_bytes,
            memory_cap_bytes=view.memory_cap_bytes,
            tasks_running=view.tasks_running,
            max_tasks=view.max_tasks,
            utilization_percent=r.utilization_percent,
            memory_utilization_percent=r.memory_utilization_percent,
            temperature_c=r.temperature_c,
            power_watts=r.power_watts,
            compute_capability=capability,
            driver_version=r.driver_version,
            resident_models=list(view.resident_models),
            draining=view.draining,
            healthy=r.healthy,
            error=r.error,
            read_at=iso_time(r.read_at),
            node=view.node or None,
            heartbeat_at=iso_time(view.heartbeat_at),
            memory_warning=MemoryWarningOut.of(view.memory_warning),
        )


class GpuList(BaseModel):
    gpus: list[GpuOut]


class GpuHistoryOut(BaseModel):
    """One device's samples, oldest first, one list per figure (the lists are as long as `at`)."""

    index: int
    uuid: str
    node: str | None
    at: list[float] = Field(description="When each sample was read, seconds since the epoch.")
    memory_used_bytes: list[int] = Field(description="Every process on the device.")
    memory_foreign_bytes: list[int] = Field(description="Processes outside gpuscribe.")
    memory_reserved_bytes: list[int] = Field(description="What gpuscribe's ledger admitted.")
    memory_cap_bytes: list[int]
    utilization_percent: list[float | None]
    temperature_c: list[float | None]
    power_watts: list[float | None]

    @classmethod
    def of(cls, trace: DeviceTrace) -> GpuHistoryOut:
        samples = trace.samples
        return cls(
            index=trace.index,
            uuid=trace.uuid,
            node=trace.node or None,
            at=[round(s.at, 3) for s in samples],
            memory_used_bytes=[s.memory_used_bytes for s in samples],
            memory_foreign_bytes=[s.memory_foreign_bytes for s in samples],
            memory_reserved_bytes=[s.memory_reserved_bytes for s in samples],
            memory_cap_bytes=[s.memory_cap_bytes for s in samples],
            utilization_percent=[s.utilization_percent for s in samples],
            temperature_c=[s.temperature_c for s in samples],
            power_watts=[s.power_watts for s in samples],
        )


class GpuHistoryList(BaseModel):
    gpus: list[GpuHistoryOut]


class EstimateOut(BaseModel):
    context_bytes: int
    weights_bytes: int
    working_bytes: int
    total_bytes: int
    source: Literal["prior", "profile", "calibrated"]
    sample_count: int
    batch_bytes: int = 0  # a batched model's cache rows and workspace, once per resident model
    batch_rows: int = 0

    @classmethod
    def of(cls, estimate: MemoryEstimate) -> EstimateOut:
        return cls(
            context_bytes=estimate.context_bytes,
            weights_bytes=estimate.weights_bytes,
            working_bytes=estimate.working_bytes,
            total_bytes=estimate.total_bytes,
            source=estimate.source.value,
            sample_count=estimate.sample_count,
            batch_bytes=estimate.batch_bytes,
            batch_rows=estimate.batch_rows,
        )


class CalibrationOut(BaseModel):
    gpu_name: str
    engine: str
    model: str
    compute_type: str
    batch_size: int
    beam_size: int
    estimate: EstimateOut
    sample_count: int
    mean_working_bytes: float | None
    max_working_bytes: int | None
    mean_error_ratio: float | None = Field(description="Mean of estimate / measured peak.")

    @classmethod
    def of(cls, row: CalibrationRow) -> CalibrationOut:
        k = row.key
        return cls(
            gpu_name=k.gpu_name,
            engine=k.engine,
            model=k.model,
            compute_type=k.compute_type,
            batch_size=k.batch_size,
            beam_size=k.beam_size,
            estimate=EstimateOut.of(row.estimate),
            sample_count=row.sample_count,
            mean_working_bytes=row.mean_working_bytes,
            max_working_bytes=row.max_working_bytes,
            mean_error_ratio=row.mean_error_ratio,
        )


class CalibrationList(BaseModel):
    calibration: list[CalibrationOut]


class HealthOut(BaseModel):
    status: Literal["ok", "unhealthy"]


# --- models (OpenAI's shape) ------------------------------------------------------------------
class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "gpuscribe"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


# --- OpenAI transcription responses ----------------------------------------------------------
class OpenAISegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class OpenAIWord(BaseModel):
    word: str
    start: float
    end: float


class OpenAITranscription(BaseModel):
    """`json` has `text` only; `verbose_json` has the rest. Markers flag non-transcripts."""

    text: str
    task: str | None = None
    language: str | None = None
    duration: float | None = None
    segments: list[OpenAISegment] | None = None
    words: list[OpenAIWord] | None = None
    simulated: bool | None = None
    benchmark_only: bool | None = None


# --- form fields ------------------------------------------------------------------------------
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"
# A code (en, yue, en-US, zh-Hans) or a name (english, haitian creole); checked against the
# model's languages after the form is read (gpuscribe.languages).
_LANGUAGE = r"^[A-Za-z][A-Za-z0-9 _-]{1,31}$"
MAX_PROMPT_CHARS = 4096


class DecodingFields(BaseModel):
    """gpuscribe's fields that both `/v1/tasks` and the OpenAI endpoints accept, validated
    alike: a bad value is a 400 naming the field, never a silent default."""

    model_config = ConfigDict(protected_namespaces=())

    engine: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    priority: str = Field(default="normal", description="urgent, high, normal or low")
    word_timestamps: bool = False
    vad_filter: bool = False
    beam_size: int = Field(default=5, ge=1, le=20)
    batch_size: int = Field(default=1, ge=1, le=64)
    compute_type: str = Field(default="default", pattern=r"^[a-z0-9_]{1,32}$")

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: str) -> str:
        text = value.strip()
        return Priority.parse(int(text) if text.isdigit() else text).label


class TaskForm(DecodingFields):
    """Form fields of `POST /v1/tasks` (besides `file`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(default=None, pattern=_NAME, description="Default: the service's.")
    language: str | None = Field(
        default=None, pattern=_LANGUAGE, description="code or name, e.g. en, de, english"
    )
    task: Literal["transcribe", "translate"] = "transcribe"
    initial_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)


class OpenAIForm(DecodingFields):
    """OpenAI's form fields of `/v1/audio/transcriptions` and `/translations`, and gpuscribe's
    decoding fields (validated as on `/v1/tasks`); other fields are ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), populate_by_name=True)

    model: str = Field(default="whisper-1", max_length=128)
    language: str | None = Field(default=None, pattern=_LANGUAGE)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=list, alias="timestamp_granularities[]"
    )
    task: Literal["transcribe", "translate"] | None = Field(
        default=None, description="Must match the endpoint when given."
    )
    max_line_width: int = Field(
        default=DEFAULT_LINE_WIDTH,
        ge=0,
        le=1000,
        description="srt/vtt: characters a line (0: no limit)",
    )
    max_line_count: int = Field(
        default=DEFAULT_LINE_COUNT, ge=0, le=100, description="srt/vtt: lines a cue (0: no limit)"
    )

    @field_validator("response_format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


def multipart_schema(form: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI requestBody for a multipart form: the form model's fields plus `file`."""
    schema = form.model_json_schema(by_alias=True)
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
    properties.update(schema.get("properties", {}))
    body = {"type": "object", "properties": properties, "required": ["file"]}
    return {"required": True, "content": {"multipart/form-data": {"schema": body}}}
