"""Rows of the SQL stores <-> the domain: one mapping shared by SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from gpuscribe.domain import (
    NewTask,
    Priority,
    Task,
    TaskEvent,
    TaskState,
    Transcript,
    TranscriptionOptions,
)
from gpuscribe.memory.types import CalibrationSample, ProfileKey
from gpuscribe.store.base import NodeRecord

Row = Mapping[str, Any]


def new_task_id() -> str:
    return str(uuid.uuid4())


def new_task_params(task_id: str, new: NewTask, now: float) -> dict[str, Any]:
    return {
        "id": task_id,
        "priority": int(new.priority),
        "options": json.dumps(new.options.to_dict(), separators=(",", ":")),
        "audio_path": new.audio_path,
        "audio_seconds": new.audio_seconds,
        "audio_format": new.audio_format,
        "created_at": now,
        "original_filename": new.original_filename,
        "idempotency_key": new.idempotency_key,
        "max_attempts": new.max_attempts,
    }


def task_from_row(row: Row) -> Task:
    return Task(
        id=row["id"],
        state=TaskState(row["state"]),
        priority=Priority(row["priority"]),
        options=TranscriptionOptions.from_dict(json.loads(row["options"])),
        audio_path=row["audio_path"],
        audio_seconds=float(row["audio_seconds"]),
        audio_format=row["audio_format"],
        created_at=float(row["created_at"]),
        original_filename=row["original_filename"],
        idempotency_key=row["idempotency_key"],
        attempts=int(row["attempts"]),
        max_attempts=int(row["max_attempts"]),
        progress=float(row["progress"]),
        gpu_index=row["gpu_index"],
        gpu_uuid=row["gpu_uuid"],
        node=row["node"],
        memory_estimate_bytes=row["memory_estimate_bytes"],
        memory_peak_bytes=row["memory_peak_bytes"],
        error=row["error"],
        wait_reason=row["wait_reason"],
        started_at=_float_or_none(row["started_at"]),
        finished_at=_float_or_none(row["finished_at"]),
        not_before=float(row["not_before"]),
        lease_token=row["lease_token"],
        lease_expires_at=_float_or_none(row["lease_expires_at"]),
        cancel_requested=bool(row["cancel_requested"]),
    )


def event_from_row(row: Row) -> TaskEvent:
    return TaskEvent(
        task_id=row["task_id"],
        at=float(row["at"]),
        state=TaskState(row["state"]),
        detail=row["detail"],
    )


def transcript_json(result: Transcript) -> str:
    return json.dumps(result.to_dict(), separators=(",", ":"), ensure_ascii=False)


def transcript_from_json(text: str) -> Transcript:
    return Transcript.from_dict(json.loads(text))


def key_params(key: ProfileKey) -> dict[str, Any]:
    return {
        "gpu_name": key.gpu_name,
        "engine": key.engine,
        "model": key.model,
        "compute_type": key.compute_type,
        "batch_size": key.batch_size,
        "beam_size": key.beam_size,
    }


def sample_params(sample: CalibrationSample) -> dict[str, Any]:
    return {
        **key_params(sample.key),
        "working_bytes": sample.working_bytes,
        "weights_bytes": sample.weights_bytes,
        "context_bytes": sample.context_bytes,
        "measured_at": sample.measured_at,
        "estimate_bytes": sample.estimate_bytes,
    }


def sample_from_row(row: Row) -> CalibrationSample:
    key = ProfileKey(
        gpu_name=row["gpu_name"],
        engine=row["engine"],
        model=row["model"],
        compute_type=row["compute_type"],
        batch_size=int(row["batch_size"]),
        beam_size=int(row["beam_size"]),
    )
    return CalibrationSample(
        key=key,
        working_bytes=int(row["working_bytes"]),
        weights_bytes=row["weights_bytes"],
        context_bytes=row["context_bytes"],
        measured_at=float(row["measured_at"]),
        estimate_bytes=row["estimate_bytes"],
    )


def node_params(node: NodeRecord) -> dict[str, Any]:
    return {
        "name": node.name,
        "role": node.role,
        "started_at": node.started_at,
        "now": node.heartbeat_at,
        "expires": node.expires_at,
        "devices": json.dumps(list(node.devices), separators=(",", ":")),
    }


def node_from_row(row: Row) -> NodeRecord:
    return NodeRecord(
        name=row["name"],
        role=row["role"],
        started_at=float(row["started_at"]),
        heartbeat_at=float(row["heartbeat_at"]),
        expires_at=float(row["expires_at"]),
        devices=tuple(json.loads(row["devices"])),
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# --- history lines, the same in every store ------------------------------------------------
SUBMITTED = "submitted"
CANCEL_REQUESTED = "cancel requested"
DECODING_BEGAN = "decoding began"  # the engine's first decode step (batched engine)
CANCELLED_QUEUED = "cancelled while queued"
CANCELLED_RUNNING = "cancelled while running"
LEASE_EXPIRED = "lease expired"
LEASE_EXPIRED_CANCELLED = "lease expired after a cancel request"
CANCELLED_UNCLAIMED = "cancelled before it started"


def claimed_detail(node: str, gpu_index: int, attempt: int) -> str:
    return f"attempt {attempt} on {node} gpu {gpu_index}"


def unclaimed_detail(reason: str) -> str:
    return f"claim given back: {reason}"


def retry_detail(error: str) -> str:
    return f"retry: {error}"


def exhausted_error(attempts: int, max_attempts: int) -> str:
    """The SQL stores write the same text in `expire_exhausted`."""
    return f"lease expired on attempt {attempts} of {max_attempts}: no attempts left"
