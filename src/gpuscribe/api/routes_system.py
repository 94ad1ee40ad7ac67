"""The service's state: queue, GPUs, calibration, health, metrics, models."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from gpuscribe.api.backend import Backend
from gpuscribe.api.routes_tasks import BackendDep, error_responses
from gpuscribe.api.schemas import (
    CalibrationList,
    CalibrationOut,
    GpuHistoryList,
    GpuHistoryOut,
    GpuList,
    GpuOut,
    HealthOut,
    ModelList,
    ModelOut,
    QueueOut,
    queue_out,
)
from gpuscribe.domain import Priority, TaskState
from gpuscribe.memory.architectures import ARCHITECTURES
from gpuscribe.metrics import device_labels
from gpuscribe.workers.models import available_models

OPENAI_MODEL_NAMES = ("whisper-1",)

router = APIRouter(tags=["system"])


@router.get("/v1/queue", response_model=QueueOut, responses=error_responses(401))
def get_queue(backend: BackendDep) -> QueueOut:
    """Tasks by state, queued tasks by priority."""
    counts = backend.counts()
    return queue_out(counts.by_state, counts.by_priority, backend.settings.max_queue_length)


@router.get("/v1/gpus", response_model=GpuList, responses=error_responses(400, 401))
def get_gpus(backend: BackendDep, fresh: bool = False) -> GpuList:
    """Every device: telemetry and gpuscribe's memory ledger. `fresh` reads the devices now."""
    return GpuList(gpus=[GpuOut.of(view) for view in backend.devices(fresh=fresh)])


@router.get("/v1/gpus/history", response_model=GpuHistoryList, responses=error_responses(400, 401))
def get_gpu_history(
    backend: BackendDep,
    seconds: Annotated[int, Query(ge=1, le=3600, description="How far back to go.")] = 300,
) -> GpuHistoryList:
    """The last minutes of this node's devices, one sample a second: memory (all, other
    processes', admitted by the ledger, the cap), utilisation, temperature, power. The node
    keeps the last ten minutes in memory; other nodes' devices are not included."""
    traces = backend.device_history(seconds)
    return GpuHistoryList(gpus=[GpuHistoryOut.of(trace) for trace in traces])


@router.get("/v1/calibration", response_model=CalibrationList, responses=error_responses(401))
def get_calibration(backend: BackendDep) -> CalibrationList:
    """Memory estimates against measurements, per (GPU model, engine, model, settings)."""
    return CalibrationList(calibration=[CalibrationOut.of(row) for row in backend.calibration()])


@router.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def healthz(backend: BackendDep) -> JSONResponse:
    """200 while the node runs with a ready worker; 503 otherwise. Needs no API key."""
    ok = backend.healthy()
    body = HealthOut(status="ok" if ok else "unhealthy").model_dump()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {"schema": {"type": "string"}}}}},
)
def metrics(backend: BackendDep) -> Response:
    """Prometheus exposition; queue and cluster gauges are refreshed from the node at each
    scrape."""
    refresh_queue_gauges(backend)
    refresh_cluster_gauges(backend)
    return Response(backend.metrics.render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def refresh_queue_gauges(backend: Backend) -> None:
    """Queued tasks per priority; other states under priority `any` (sums stay exact)."""
    counts = backend.counts()
    gauge = backend.metrics.queue_length
    for priority in Priority:
        gauge.labels("queued", priority.label).set(counts.by_priority.get(priority.label, 0))
    for state in TaskState:
        if state is not TaskState.QUEUED:
            gauge.labels(state.value, "any").set(counts.by_state.get(state.value, 0))


def refresh_cluster_gauges(backend: Backend) -> None:
    """Every live node's devices and heartbeat; nodes that left the cluster leave the gauges."""
    m = backend.metrics
    gauges = (
        m.cluster_memory_used, m.cluster_memory_reserved, m.cluster_memory_cap,
        m.cluster_tasks_running, m.cluster_memory_warning, m.cluster_heartbeat,
    )  # fmt: skip
    for gauge in gauges:
        gauge.clear()
    for view in backend.devices():
        r = view.reading
        labels = device_labels(r.kind, r.index, r.uuid, r.name, view.node)
        m.cluster_memory_used.labels(*labels).set(r.memory_used_bytes)
        m.cluster_memory_reserved.labels(*labels).set(view.memory_reserved_bytes)
        m.cluster_memory_cap.labels(*labels).set(view.memory_cap_bytes)
        m.cluster_tasks_running.labels(*labels).set(view.tasks_running)
        m.cluster_memory_warning.labels(*labels).set(0 if view.memory_warning is None else 1)
        if view.heartbeat_at is not None:
            m.cluster_heartbeat.labels(view.node).set(view.heartbeat_at)


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401))
def list_models(
    backend: BackendDep, engine: Literal["faster-whisper", "transformers"] | None = None
) -> ModelList:
    """Models this server can run (OpenAI's shape); `whisper-1` means the default model."""
    names = model_names(backend, engine or backend.default_engine)
    data = [ModelOut(id=name) for name in (*names, *OPENAI_MODEL_NAMES)]
    return ModelList(data=data)


def model_names(backend: Backend, engine: str) -> list[str]:
    settings = backend.settings
    if settings.simulate_gpus:
        return sorted(ARCHITECTURES)
    return available_models(
        engine,
        models_dir=settings.models_dir,
        allow_downloads=settings.allow_downloads,
        benchmark_only=settings.benchmark_only,
    )
