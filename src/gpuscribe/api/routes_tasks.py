"""gpuscribe's own task endpoints: submit, read, result, cancel, list."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from gpuscribe.api import formats
from gpuscribe.api.backend import Backend
from gpuscribe.api.errors import ApiError
from gpuscribe.api.form_values import parse_form, resolve_model_name
from gpuscribe.api.schemas import (
    ErrorResponse,
    OpenAITranscription,
    TaskForm,
    TaskList,
    TaskOut,
    multipart_schema,
)
from gpuscribe.api.submission import Submission, accept
from gpuscribe.domain import Priority, Task, TaskKind, TaskState, TranscriptionOptions
from gpuscribe.languages import check_language


async def backend_of(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


BackendDep = Annotated[Backend, Depends(backend_of)]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers (all share ErrorResponse)."""
    return {status: {"model": ErrorResponse} for status in statuses}


UPLOAD_ERRORS = error_responses(400, 401, 413, 415, 422, 429, 500)
router = APIRouter(tags=["tasks"])


def task_body(task: Task) -> dict[str, Any]:
    return TaskOut.of(task).model_dump(mode="json")


@router.post(
    "/v1/tasks",
    status_code=202,
    response_model=TaskOut,
    responses=UPLOAD_ERRORS,
    openapi_extra={"requestBody": multipart_schema(TaskForm)},
    summary="Submit audio for transcription",
)
async def create_task(request: Request, backend: BackendDep) -> JSONResponse:
    """Multipart: `file` and the form fields below; header `Idempotency-Key` (optional)."""
    accepted = await accept(request, backend, partial(task_submission, backend))
    task = accepted.task
    headers = {"Location": f"/v1/tasks/{task.id}"}
    if not accepted.created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(task_body(task), status_code=202, headers=headers)


def task_submission(
    backend: Backend, fields: Mapping[str, list[str]]
) -> tuple[TaskForm, Submission]:
    """The form fields, validated, with the model resolved. Blocking (model lookup)."""
    form = parse_form(fields, TaskForm)
    settings = backend.settings
    engine = form.engine or backend.default_engine
    model = resolve_model_name(form.model or settings.default_model, engine, settings)
    options = TranscriptionOptions(
        model=model,
        engine=engine,
        task=TaskKind(form.task),
        language=check_language(form.language, model),
        beam_size=form.beam_size,
        batch_size=form.batch_size,
        compute_type=form.compute_type,
        word_timestamps=form.word_timestamps,
        vad_filter=form.vad_filter,
        initial_prompt=form.initial_prompt,
        temperature=form.temperature,
    )
    return form, Submission(options, Priority.parse(form.priority))


def _task_or_404(backend: Backend, task_id: str) -> Task:
    task = backend.task(task_id)
    if task is None:
        raise ApiError(404, f"no task with id {task_id!r}", code="task_not_found", param="id")
    return task


@router.get("/v1/tasks/{task_id}", response_model=TaskOut, responses=error_responses(401, 404))
def get_task(task_id: str, backend: BackendDep) -> dict[str, Any]:
    """One task, with its history."""
    task = _task_or_404(backend, task_id)
    history = backend.history(task_id)
    return TaskOut.of(task, history).model_dump(mode="json")


_RESULT_CONTENT = {
    "description": "The transcript: JSON for json/verbose_json, text for the others.",
    "model": OpenAITranscription,
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@router.get(
    "/v1/tasks/{task_id}/result",
    response_class=Response,
    responses={200: _RESULT_CONTENT, **error_responses(400, 401, 404, 409)},
)
def get_result(
    task_id: str,
    backend: BackendDep,
    format_name: Annotated[
        str,
        Query(
            alias="format",
            max_length=32,
            description="json, verbose_json, text, srt, vtt or tsv (any case)",
        ),
    ] = "json",
    max_line_width: Annotated[
        int, Query(ge=0, le=1000, description="srt/vtt: characters a line (0: no limit)")
    ] = formats.DEFAULT_LINE_WIDTH,
    max_line_count: Annotated[
        int, Query(ge=0, le=100, description="srt/vtt: lines a cue (0: no limit)")
    ] = formats.DEFAULT_LINE_COUNT,
) -> Response:
    """The transcript of a completed task. 409 while it is not completed."""
    fmt = formats.result_format(format_name)
    if fmt is None:
        raise ApiError(
            400,
            f"invalid query parameter 'format': {format_name!r} is not one of "
            f"{', '.join(formats.RESULT_FORMATS)}",
            code="invalid_value",
            param="format",
        )
    layout = formats.SubtitleLayout(max_line_width, max_line_count)
    task = _task_or_404(backend, task_id)
    if task.state is not TaskState.COMPLETED:
        raise _not_ready(task)
    transcript = backend.result(task_id)
    if transcript is None:
        raise ApiError(
            500, f"task {task_id} is completed but its result is missing", code="result_missing"
        )
    if fmt == "json":
        return JSONResponse(formats.to_json(transcript))
    if fmt == "verbose_json":
        granularities = ("segment", "word") if task.options.word_timestamps else ("segment",)
        return JSONResponse(formats.to_verbose_json(transcript, granularities))
    text = formats.render_text(transcript, fmt, layout)
    return Response(text, media_type=formats.media_type(fmt))


def _not_ready(task: Task) -> ApiError:
    if task.state is TaskState.FAILED:
        return ApiError(
            409, f"task {task.id} failed: {task.error or 'no reason recorded'}", code="task_failed"
        )
    if task.state is TaskState.CANCELLED:
        return ApiError(
            409, f"task {task.id} was cancelled: it has no result", code="task_cancelled"
        )
    progress = f"{task.progress:.0%}"
    return ApiError(
        409,
        f"task {task.id} is {task.state.value} ({progress} done): its result is not ready yet",
        code="task_not_ready",
    )


@router.delete(
    "/v1/tasks/{task_id}", response_model=TaskOut, responses=error_responses(401, 404, 409)
)
def cancel_task(task_id: str, backend: BackendDep) -> dict[str, Any]:
    """Cancel: a queued task at once, a running one is stopped (`cancel_requested`)."""
    task = backend.cancel(task_id)
    if task is None:
        raise ApiError(404, f"no task with id {task_id!r}", code="task_not_found", param="id")
    if task.state in (TaskState.COMPLETED, TaskState.FAILED):
        raise ApiError(
            409,
            f"task {task_id} is already {task.state.value}: nothing to cancel",
            code="task_final",
        )
    return task_body(task)


@router.get("/v1/tasks", response_model=TaskList, responses=error_responses(400, 401))
def list_tasks(
    backend: BackendDep,
    state: TaskState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Tasks, newest first, optionally in one state."""
    tasks = backend.tasks(state=state, limit=limit)
    return {"tasks": [task_body(t) for t in tasks]}
