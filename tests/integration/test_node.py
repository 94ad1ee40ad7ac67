"""node.node: the whole node on simulated GPUs, with its scheduler, workers and upkeep threads
running, over SQLite in a temporary directory (or the in-memory store where said)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_store_contract import pg_ok, pg_url  # noqa: F401  (fixtures)

from gpuscribe.api.app import create_app
from gpuscribe.api.backend import QueueFull
from gpuscribe.config import Settings, load_settings
from gpuscribe.domain import NewTask, Priority, Task, TaskState, TranscriptionOptions
from gpuscribe.memory.profiles import REFERENCE_CONTEXT_BYTES
from gpuscribe.memory.types import GIB
from gpuscribe.node.cluster import Role
from gpuscribe.node.node import Node
from gpuscribe.node.scheduler import profile_key
from gpuscribe.store.audio import PG_PREFIX
from gpuscribe.store.base import Claim, TaskStore
from gpuscribe.store.memory import InMemoryStore
from gpuscribe.store.sqlite import SqliteStore
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.telemetry.simulated import SimulatedGpus

GPU_NAME = "NVIDIA H200"
SPEC = f"2x24GiB:{GPU_NAME}"
TINY = TranscriptionOptions(model="tiny.en", engine="transformers", compute_type="float16")
FAST = 2000.0  # simulated audio seconds per second: 60 s of audio take 30 ms
LONG_AUDIO = 3600.0  # at simulation_speed 1: runs until stopped


def settings_for(tmp_path: Path, **flags: Any) -> Settings:
    values = {
        "data_dir": str(tmp_path / "data"),
        "node_name": "node-a",
        "simulation_speed": FAST,
        "scheduler_interval_seconds": 0.02,
        "heartbeat_seconds": 0.1,
        **flags,
    }
    return load_settings(flags=values, env={})


def new_task(
    settings: Settings, name: str, seconds: float = 60.0, *, key: str | None = None
) -> NewTask:
    settings.audio_dir.mkdir(parents=True, exist_ok=True)
    audio = settings.audio_dir / f"{name}.wav"
    audio.write_bytes(b"RIFF....WAVE")
    return NewTask(Priority.NORMAL, TINY, str(audio), seconds, "wav", idempotency_key=key)


def wait_for(node: Node, task_id: str, states: set[TaskState], timeout: float = 10.0) -> Task:
    deadline = time.monotonic() + timeout
    while True:
        task = node.store.get(task_id)
        if task is not None and task.state in states:
            return task
        assert time.monotonic() < deadline, f"task {task_id} still {task and task.state}"
        time.sleep(0.01)


def wait_gone(path: str | Path, timeout: float = 5.0) -> None:
    """A final task's audio is deleted last of all the handling of its final event: once it is
    gone, the store, the calibration and the metrics have all been updated."""
    deadline = time.monotonic() + timeout
    while Path(path).exists():
        assert time.monotonic() < deadline, f"{path} was not deleted"
        time.sleep(0.01)


def wait_dispatched(node: Node, task_id: str, timeout: float = 5.0) -> Task:
    """Wait until the task runs in its worker: its simulated device holds more than the worker's
    context. Tests that end with a task just claimed wait for this first, because stopping a
    node while its scheduler dispatches is not safe (see the report on Node.stop)."""
    task = wait_for(node, task_id, {TaskState.RUNNING}, timeout)
    assert task.gpu_uuid is not None
    gpus = node.telemetry
    assert isinstance(gpus, SimulatedGpus)
    (pid,) = node.slots[task.gpu_uuid].worker.pids()
    deadline = time.monotonic() + timeout
    while gpus.held_by(task.gpu_uuid, pid) <= REFERENCE_CONTEXT_BYTES:
        assert time.monotonic() < deadline, f"task {task_id} never started in its worker"
        time.sleep(0.01)
    return task


def counter(node: Node, name: str, **labels: str) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(*, store: TaskStore | None = None, spec: str = SPEC, **flags: Any) -> Node:
        node = Node(settings_for(tmp_path, **flags), store=store, telemetry=SimulatedGpus(spec))
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()  # a second stop (after a test's own) is harmless


# --- end to end -------------------------------------------------------------------------------
def test_a_submitted_task_completes_with_a_simulated_result(make_node: Callable[..., Node]) -> None:
    node = make_node()  # SQLite under data_dir
    node.start()
    new = new_task(node.settings, "a", 75.0, key="k-1")

    task, created = node.submit(new)
    assert created and task.state is TaskState.QUEUED

    done = wait_for(node, task.id, {TaskState.COMPLETED, TaskState.FAILED})
    assert done.state is TaskState.COMPLETED, done.error
    assert done.node == "node-a" and done.gpu_uuid in node.slots
    assert done.attempts == 1 and done.progress == 1.0
    assert done.memory_estimate_bytes is not None and done.memory_peak_bytes is not None
    result = node.store.result(task.id)
    assert result is not None
    assert result.simulated
    assert result.duration == 75.0
    assert [s.text for s in result.segments] == ["[simulated]"] * 3  # one per 30 s window
    wait_gone(new.audio_path)  # final: its audio is deleted
    key = profile_key(done, GPU_NAME)
    assert [s.key for s in node.store.samples(key, limit=5)] == [key]  # it ran alone: learned
    rows = node.calibration()
    assert [r.key.model for r in rows] == ["tiny.en"] and rows[0].sample_count == 1

    again, created = node.submit(new)  # the same idempotency key
    assert not created and again.id == task.id
    assert counter(node, "gpuscribe_submissions_total", outcome="accepted") == 1
    assert counter(node, "gpuscribe_submissions_total", outcome="duplicate") == 1


def test_a_task_its_worker_completes_is_signalled_final(make_node: Callable[..., Node]) -> None:
    node = make_node()
    task, _ = node.submit(new_task(node.settings, "a"))  # watched before it can run
    finished = threading.Event()
    with node.watch_final(task.id, finished.set):
        node.start()
        assert finished.wait(timeout=10)
        assert node.store.get(task.id).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert len(node.finals) == 0  # nobody watches it any more


def test_many_tasks_complete_and_nothing_stays_charged(make_node: Callable[..., Node]) -> None:
    node = make_node(store=InMemoryStore(), max_tasks_per_gpu=2)
    node.start()
    news = [new_task(node.settings, f"t{i}", 30.0) for i in range(8)]
    ids = [node.submit(new)[0].id for new in news]
    for task_id, new in zip(ids, news, strict=True):
        done = wait_for(node, task_id, {TaskState.COMPLETED, TaskState.FAILED})
        assert done.state is TaskState.COMPLETED, done.error
        wait_gone(new.audio_path)
    assert len(node.running) == 0
    for slot in node.slots.values():
        assert slot.ledger.running_tasks == 0
    # the simulated devices never went past their totals
    for uuid in node.slots:
        assert node.telemetry.peak_used(uuid) <= 24 * GIB  # type: ignore[attr-defined]
    assert list(node.settings.audio_dir.iterdir()) == []


def test_submissions_past_max_queue_length_are_refused(make_node: Callable[..., Node]) -> None:
    node = make_node(store=InMemoryStore(), max_queue_length=2)  # not started: nothing runs
    node.submit(new_task(node.settings, "a"))
    node.submit(new_task(node.settings, "b"))

    with pytest.raises(QueueFull) as refused:
        node.submit(new_task(node.settings, "c"))

    assert refused.value.retry_after_seconds >= 1
    assert node.store.count_queued() == 2
    assert counter(node, "gpuscribe_submissions_total", outcome="rejected") == 1
    assert counter(node, "gpuscribe_submissions_total", outcome="accepted") == 2


def test_cancel_of_a_queued_task(make_node: Callable[..., Node]) -> None:
    node = make_node(store=InMemoryStore())  # not started: the task stays queued
    new = new_task(node.settings, "a")
    task, _ = node.submit(new)
    seen: list[str] = []

    with node.watch_final(task.id, lambda: seen.append(task.id)):
        cancelled = node.cancel(task.id)

    assert cancelled is not None and cancelled.state is TaskState.CANCELLED
    assert seen == [task.id]  # who waits for it is told at once
    assert node.store.get(task.id).state is TaskState.CANCELLED  # type: ignore[union-attr]
    assert not Path(new.audio_path).exists()
    assert node.cancel("no-such-task") is None


def test_cancel_of_a_running_task(make_node: Callable[..., Node]) -> None:
    node = make_node(simulation_speed=1.0)
    node.start()
    new = new_task(node.settings, "a", LONG_AUDIO)
    task, _ = node.submit(new)
    wait_for(node, task.id, {TaskState.RUNNING})

    requested = node.cancel(task.id)

    assert requested is not None and requested.cancel_requested
    done = wait_for(node, task.id, {TaskState.CANCELLED, TaskState.FAILED, TaskState.COMPLETED})
    assert done.state is TaskState.CANCELLED
    wait_gone(new.audio_path)
    assert len(node.running) == 0


def test_cancel_taken_by_another_node_reaches_the_worker(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """The store's flag is a cancel's one route: the node running the task finds it there."""
    store = InMemoryStore()
    node = make_node(store=store, simulation_speed=1.0)
    node.start()
    new = new_task(node.settings, "a", LONG_AUDIO)
    task, _ = node.submit(new)
    wait_dispatched(node, task.id)
    api_only = Node(
        settings_for(tmp_path, node_name="node-b"), store=store, telemetry=SimulatedGpus(SPEC),
        role=Role.API,
    )  # fmt: skip

    requested = api_only.cancel(task.id)

    assert requested is not None and requested.cancel_requested
    done = wait_for(node, task.id, {TaskState.CANCELLED, TaskState.FAILED, TaskState.COMPLETED})
    assert done.state is TaskState.CANCELLED
    wait_gone(new.audio_path)
    assert len(node.running) == 0


# --- start ------------------------------------------------------------------------------------
def test_start_sweeps_orphan_audio_but_keeps_audio_of_live_tasks(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    store = SqliteStore(str(tmp_path / "store.db"))
    queued = new_task(settings, "queued", LONG_AUDIO)
    store.add(queued, now=time.time())
    elsewhere = new_task(settings, "running-elsewhere", LONG_AUDIO)
    other, _ = store.add(elsewhere, now=time.time())
    store.claim(Claim(other.id, "node-b", 0, "GPU-b", GIB, 600.0), now=time.time())
    done = new_task(settings, "done")
    finished, _ = store.add(done, now=time.time())
    store.cancel(finished.id, now=time.time())
    audio = settings.audio_dir
    (audio / ".upload-x.part").write_bytes(b"half an upload")
    (audio / "orphan.wav").write_bytes(b"RIFF")
    (audio / "subdir").mkdir()
    spool = Path(settings.data_dir) / "spool"  # a worker's spooled copy, left by a crash
    spool.mkdir()
    (spool / "spool-1234.wav").write_bytes(b"RIFF")

    node = make_node(store=store, simulation_speed=1.0)
    node.start()

    left = sorted(p.name for p in audio.iterdir())
    assert left == ["queued.wav", "running-elsewhere.wav", "subdir"]
    assert list(spool.iterdir()) == []
    queued_id = next(t.id for t in store.list_tasks(limit=10) if t.audio_path == queued.audio_path)
    wait_dispatched(node, queued_id)


def test_start_requeues_tasks_this_node_left_running(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    store = InMemoryStore()
    mine, _ = store.add(new_task(settings, "mine", LONG_AUDIO), now=100.0)
    theirs, _ = store.add(new_task(settings, "theirs", LONG_AUDIO), now=100.0)
    store.claim(Claim(mine.id, "node-a", 0, "GPU-old", GIB, 1e9), now=100.0)
    theirs_claimed = store.claim(Claim(theirs.id, "node-b", 0, "GPU-b", GIB, 1e9), now=100.0)
    assert theirs_claimed is not None

    node = make_node(store=store, simulation_speed=1.0)
    node.start()

    details = [e.detail for e in store.history(mine.id)]
    assert "retry: the node restarted while it ran" in details
    # requeued at once (not after its lease of 1e9 s): it runs again here, as attempt 2
    again = wait_dispatched(node, mine.id)
    assert again.attempts == 2 and again.node == "node-a" and again.gpu_uuid in node.slots
    untouched = store.get(theirs.id)
    assert untouched is not None
    assert untouched.state is TaskState.RUNNING and untouched.node == "node-b"
    assert untouched.lease_token == theirs_claimed.lease_token


# --- views ------------------------------------------------------------------------------------
def test_devices_view(make_node: Callable[..., Node]) -> None:
    node = make_node(store=InMemoryStore(), max_tasks_per_gpu=3)
    node.start()
    views = node.devices(fresh=True)
    assert [v.reading.index for v in views] == [0, 1]
    for view in views:
        assert view.reading.name == GPU_NAME
        assert view.reading.kind is DeviceKind.SIMULATED
        assert view.reading.memory_total_bytes == 24 * GIB
        assert view.memory_cap_bytes == int(24 * GIB * 0.9)
        assert view.memory_reserved_bytes == REFERENCE_CONTEXT_BYTES  # the workers' context
        assert view.tasks_running == 0
        assert view.max_tasks == 3
        assert view.resident_models == ()
        assert not view.draining

    task, _ = node.submit(new_task(node.settings, "a", 30.0))
    done = wait_for(node, task.id, {TaskState.COMPLETED})
    used = next(v for v in node.devices(fresh=True) if v.reading.uuid == done.gpu_uuid)
    assert used.resident_models == ("tiny.en",)
    assert used.memory_reserved_bytes > REFERENCE_CONTEXT_BYTES  # the model's weights

    lost = node.devices()[1].reading.uuid
    node.telemetry.lose(lost)  # type: ignore[attr-defined]
    assert next(v for v in node.devices(fresh=True) if v.reading.uuid == lost).draining


def test_healthy_once_a_worker_is_ready_until_stopped(make_node: Callable[..., Node]) -> None:
    node = make_node(store=InMemoryStore())
    assert not node.healthy()  # no worker has reported ready
    node.start()
    assert node.healthy()
    node.stop()
    assert not node.healthy()


def test_devices_setting_limits_the_node_to_the_named_gpus(make_node: Callable[..., Node]) -> None:
    node = make_node(store=InMemoryStore(), spec=f"3x24GiB:{GPU_NAME}", devices="2")
    assert [s.device.index for s in node.slots.values()] == [2]
    assert node.default_engine == "faster-whisper"  # no CUDA device: the CPU engine's default


# --- several nodes, one PostgreSQL ------------------------------------------------------------
@pytest.fixture
def pg_nodes(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Node]]:  # noqa: F811
    """Nodes on one PostgreSQL store, each with a data directory of its own."""
    nodes: list[Node] = []

    def make(name: str, role: Role = Role.SERVE, **flags: Any) -> Node:
        settings = settings_for(
            tmp_path / name, node_name=name, store=pg_url, lease_seconds=2.0, **flags
        )
        node = Node(settings, telemetry=SimulatedGpus(SPEC), role=role)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


def pg_audio_names(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM audio_objects").fetchall()]


def test_with_postgres_the_audio_lives_in_the_database(
    pg_nodes: Callable[..., Node],
    pg_url: str,  # noqa: F811
) -> None:
    node = pg_nodes("node-a")
    new = new_task(node.settings, "a", 60.0)
    task, _ = node.submit(new)
    assert not Path(new.audio_path).exists()  # moved into PostgreSQL: no node needs this disk
    assert task.audio_path == f"{PG_PREFIX}a.wav"
    assert pg_audio_names(pg_url) == ["a.wav"]
    node.start()
    assert wait_for(node, task.id, {TaskState.COMPLETED}).node == "node-a"
    deadline = time.monotonic() + 5.0
    while pg_audio_names(pg_url):  # a final task's audio goes
        assert time.monotonic() < deadline, "the audio of a final task stayed in PostgreSQL"
        time.sleep(0.02)


def test_an_api_node_queues_a_worker_node_runs_any_node_answers(
    pg_nodes: Callable[..., Node],
    pg_url: str,  # noqa: F811
) -> None:
    api = pg_nodes("node-api", Role.API)
    worker = pg_nodes("node-gpu", Role.WORKER)
    api.start()
    worker.start()
    assert api.slots == {} and api.healthy()
    task, _ = api.submit(new_task(api.settings, "a", 60.0))
    done = wait_for(api, task.id, {TaskState.COMPLETED, TaskState.FAILED})
    assert done.state is TaskState.COMPLETED and done.node == "node-gpu"
    assert api.store.result(task.id) is not None  # the API node serves what another ran

    views = api.devices()
    assert [(v.node, v.reading.index) for v in views] == [("node-gpu", 0), ("node-gpu", 1)]
    assert all(v.heartbeat_at is not None and v.reading.name == GPU_NAME for v in views)
    assert [(v.node, v.reading.index) for v in worker.devices()] == [
        ("node-gpu", 0),
        ("node-gpu", 1),
    ]
    assert api.default_engine == "faster-whisper"  # simulated devices are not CUDA
    with TestClient(create_app(api)) as client:  # the API node's /metrics: the whole cluster
        text = client.get("/metrics").text
    caps = [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gpuscribe_cluster_gpu_memory_cap_bytes"
    ]
    # The DCGM exporter's labels; Hostname is the node that drives the device.
    dcgm = [
        {"gpu": str(g), "UUID": views[g].reading.uuid, "device": f"sim{g}", "modelName": GPU_NAME}
        for g in (0, 1)
    ]
    assert sorted(caps, key=lambda labels: labels["gpu"]) == sorted(
        ({**labels, "Hostname": "node-gpu"} for labels in dcgm), key=lambda labels: labels["gpu"]
    )
    assert 'gpuscribe_cluster_node_heartbeat_timestamp_seconds{Hostname="node-gpu"}' in text

    worker.stop()  # a node that stops leaves the view at once
    assert api.devices() == []
    with TestClient(create_app(api)) as client:
        text = client.get("/metrics").text
        assert 'node="node-gpu"' not in text and 'Hostname="node-gpu"' not in text


def test_a_node_that_stops_heart_beating_leaves_the_view_when_its_lease_ends(
    pg_nodes: Callable[..., Node],
) -> None:
    api = pg_nodes("node-api", Role.API)
    worker = pg_nodes("node-gpu", Role.WORKER)
    record = worker.beat()  # as if it heart-beat once, then died without a word
    assert record.expires_at == record.heartbeat_at + 2.0
    assert {v.node for v in api.devices()} == {"node-gpu"}
    time.sleep(2.2)
    assert api.devices() == []
