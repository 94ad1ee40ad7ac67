"""The worker process of one device: holds loaded models, runs tasks in threads, reports events.

Started by `ProcessWorker` (workers/handle.py) as a `spawn` process with `worker_main` as its
target. For a CUDA device the environment names that one GPU before PyTorch is imported, so
inside the process it is always `cuda:0`. The worker never writes to the store: it only reports
(see workers/messages.py).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from gpuscribe.config import Settings
from gpuscribe.domain import InvalidRequest, Segment, Transcript
from gpuscribe.memory.types import ModelKey
from gpuscribe.store.audio import (
    PG_PREFIX,
    AudioStore,
    AudioUnavailable,
    audio_store_for,
    spool,
)
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.audio_decoding import AudioDecoder, decode_processes
from gpuscribe.workers.base import TaskCancelled
from gpuscribe.workers.measure import DeviceMemory, PeakSampler, ProgressThrottle
from gpuscribe.workers.messages import (
    CancelTask,
    DeviceRef,
    FailureKind,
    ModelLoaded,
    ModelUnloaded,
    RunTask,
    Shutdown,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    UnloadModel,
    WorkerEvent,
    WorkerReady,
)

if TYPE_CHECKING:
    from gpuscribe.workers.base import Engine, LoadedModel

log = logging.getLogger(__name__)

T = TypeVar("T")
SHUTDOWN_JOIN_SECONDS = 10.0


# --- pure helpers -----------------------------------------------------------------------------
def prepare_environment(device: DeviceRef, environ: MutableMapping[str, str]) -> None:
    """Name the one GPU this process drives, before anything initialises CUDA."""
    if device.kind is DeviceKind.CUDA:
        environ["CUDA_VISIBLE_DEVICES"] = device.uuid
        environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    else:
        environ["CUDA_VISIBLE_DEVICES"] = ""


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class ModelUnavailable(RuntimeError):
    """This node could not load the task's model (absent here, unreadable, a broken engine)."""


def classify_failure(exc: BaseException, *, decoding: bool) -> FailureKind:
    """How a task's exception is reported. `decoding`: it came from reading the audio.

    What only this node lacks (the audio's bytes, a model it cannot load) is NODE_LOCAL: the
    task goes back to the queue for another node, never failed as the input's fault."""
    if isinstance(exc, (TaskCancelled, CancelledError)):  # the latter: a decode the pool's
        return FailureKind.CANCELLED  # shutdown cancelled (the worker is stopping)
    if is_out_of_memory(exc) or is_out_of_memory(exc.__cause__ or exc):
        return FailureKind.OUT_OF_MEMORY
    if isinstance(exc, (AudioUnavailable, ModelUnavailable)) or (
        decoding and isinstance(exc, FileNotFoundError)
    ):
        return FailureKind.NODE_LOCAL
    if isinstance(exc, InvalidRequest):
        return FailureKind.BAD_INPUT
    if isinstance(exc, BrokenProcessPool):
        return FailureKind.TRANSIENT  # a decoding child died: retried, within the attempt limit
    if decoding:
        return FailureKind.BAD_INPUT  # the audio was probed at upload: it is the input's fault
    return FailureKind.TRANSIENT


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def model_key(command: RunTask) -> ModelKey:
    options = command.options
    return ModelKey(options.engine, options.model, options.compute_type)


def accepts(function: Callable[..., object], name: str) -> bool:
    """Whether `function` takes a parameter called `name` (engines differ: only the batched
    transformers engine takes `batch_rows` and `priority`)."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


# --- model cache ------------------------------------------------------------------------------
@dataclass(slots=True)
class _Resident(Generic[T]):
    model: T
    users: int = 0
    unload_when_idle: bool = False


class ModelCache(Generic[T]):
    """Loaded models by key. A key loads once however many tasks ask at the same time (one lock
    per key); a model asked to go while tasks use it goes when the last of them is done."""

    def __init__(
        self,
        load: Callable[[ModelKey], T],
        unload: Callable[[ModelKey, T], None],
    ) -> None:
        self._load = load
        self._unload = unload
        self._lock = threading.Lock()
        self._key_locks: dict[ModelKey, threading.Lock] = {}
        self._resident: dict[ModelKey, _Resident[T]] = {}

    def acquire(self, key: ModelKey) -> T:
        """The model, loaded if absent; the caller must `release` it when done."""
        with self._lock:
            found = self._use(key)
            if found is not None:
                return found
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                found = self._use(key)
                if found is not None:
                    return found
            model = self._load(key)
            with self._lock:
                self._resident[key] = _Resident(model, users=1)
            return model

    def release(self, key: ModelKey) -> None:
        with self._lock:
            entry = self._resident.get(key)
            if entry is None:
                return
            entry.users -= 1
            if entry.users > 0 or not entry.unload_when_idle:
                return
            del self._resident[key]
        self._unload(key, entry.model)

    def evict(self, key: ModelKey) -> None:
        """Unload now if idle, else once its last task releases it."""
        with self._lock:
            entry = self._resident.get(key)
            if entry is None:
                return
            if entry.users > 0:
                entry.unload_when_idle = True
                return
            del self._resident[key]
        self._unload(key, entry.model)

    def clear(self) -> None:
        with self._lock:
            entries = list(self._resident.items())
            self._resident.clear()
        for key, entry in entries:
            self._unload(key, entry.model)

    def resident(self) -> dict[ModelKey, T]:
        with self._lock:
            return {key: entry.model for key, entry in self._resident.items()}

    def _use(self, key: ModelKey) -> T | None:
        entry = self._resident.get(key)
        if entry is None:
            return None
        entry.users += 1
        entry.unload_when_idle = False
        return entry.model


# --- sending ----------------------------------------------------------------------------------
class Outbox:
    """Sends events to the parent from any thread, one at a time. A parent gone is logged once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._broken = False

    def send(self, event: WorkerEvent) -> None:
        with self._lock:
            if self._broken:
                return
            try:
                self._conn.send(event)
            except (OSError, EOFError, ValueError) as exc:
                self._broken = True
                log.warning("cannot report to the parent (%s): it is gone", exc)


# --- tasks ------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Running:
    command: RunTask
    stop: threading.Event = field(default_factory=threading.Event)
    shutting_down: bool = False
    thread: threading.Thread | None = None


class Worker:
    """The state of one worker process: device memory, models, running tasks."""

    def __init__(
        self, device: DeviceRef, settings: Settings, outbox: Outbox, memory: DeviceMemory
    ) -> None:
        self.device = device
        self.settings = settings
        self.outbox = outbox
        self.memory = memory
        self.sampler = PeakSampler(memory)
        cuda = device.kind is DeviceKind.CUDA
        self.audio = AudioDecoder(decode_processes(os.cpu_count()) if cuda else 0)
        self.models: ModelCache[LoadedModel] = ModelCache(self._load_model, self._unload_model)
        self._engines: dict[str, Engine] = {}
        self._tasks: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._audio_stores: dict[bool, AudioStore] = {}  # by "in PostgreSQL", opened once
        self._batch_rows: dict[ModelKey, int] = {}  # what the ledger charged, from RunTask

    # commands
    def handle(self, command: object) -> bool:
        """Act on one command; False once the worker should end."""
        if isinstance(command, RunTask):
            self.start_task(command)
        elif isinstance(command, CancelTask):
            self.cancel(command.task_id)
        elif isinstance(command, UnloadModel):
            threading.Thread(target=self.models.evict, args=(command.model,), daemon=True).start()
        elif isinstance(command, Shutdown):
            return False
        else:
            log.warning("ignoring unknown command %r", command)
        return True

    def start_task(self, command: RunTask) -> None:
        with self._lock:
            if command.task_id in self._tasks:
                log.warning("task %s is already running here; ignoring", command.task_id)
                return
            running = _Running(command)
            self._tasks[command.task_id] = running
            if command.batch_rows > 0:
                self._batch_rows[model_key(command)] = command.batch_rows
        self.memory.limit(command.admitted_bytes)
        thread = threading.Thread(
            target=self._task_thread, args=(running,), name=f"task-{command.task_id}", daemon=True
        )
        running.thread = thread
        thread.start()

    def cancel(self, task_id: str) -> None:
        with self._lock:
            running = self._tasks.get(task_id)
        if running is None:
            log.info("cancel for task %s, which is not running here", task_id)
            return
        running.stop.set()

    def shutdown(self, join_seconds: float = SHUTDOWN_JOIN_SECONDS) -> int:
        """Stop the running tasks (they stop between segments) and unload the models. Returns
        how many task threads are still inside the engine after `join_seconds`: their models
        are then left loaded, as unloading one waits for the engine's running work."""
        with self._lock:
            tasks = list(self._tasks.values())
        for running in tasks:
            running.shutting_down = True
            running.stop.set()
        deadline = time.monotonic() + join_seconds
        for running in tasks:
            if running.thread is not None:
                running.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = sum(1 for r in tasks if r.thread is not None and r.thread.is_alive())
        if not stuck:
            self.models.clear()
        self.sampler.stop()
        self.audio.close()
        return stuck

    # one task
    def _task_thread(self, running: _Running) -> None:
        command = running.command
        started = time.monotonic()
        self.outbox.send(TaskStarted(command.task_id, command.lease_token))
        self.sampler.begin(command.task_id)
        try:
            event = self._execute(running, started)
        finally:
            with self._lock:
                self._tasks.pop(command.task_id, None)
        self.outbox.send(event)

    def _execute(self, running: _Running, started: float) -> TaskCompleted | TaskFailed:
        command = running.command
        throttle = ProgressThrottle()
        decoding = True
        try:
            audio = self._read_audio(command.audio_path, command.priority)
            decoding = False
            transcript = self._transcribe(running, audio, throttle)
        except BaseException as exc:
            peak = self.sampler.end(command.task_id)
            return self._failure(running, exc, decoding, peak.peak_bytes if peak else None)
        peak = self.sampler.end(command.task_id)
        if throttle.finish() is not None:
            self.outbox.send(TaskProgress(command.task_id, command.lease_token, 1.0))
        return TaskCompleted(
            task_id=command.task_id,
            lease_token=command.lease_token,
            transcript=transcript,
            peak_bytes=peak.peak_bytes if peak else None,
            working_bytes=peak.working_bytes if peak else None,
            ran_alone=peak.ran_alone if peak else False,
            seconds=time.monotonic() - started,
        )

    def _transcribe(
        self, running: _Running, audio: object, throttle: ProgressThrottle
    ) -> Transcript:
        import numpy as np

        command = running.command
        key = model_key(command)
        for evicted in command.evict:
            if evicted != key:
                self.models.evict(evicted)
        if running.stop.is_set():
            raise TaskCancelled("stopped before the model was loaded")
        try:
            model = self.models.acquire(key)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            raise ModelUnavailable(
                f"node {self.settings.node_name} cannot load {key.engine} {key.model}: "
                f"{describe(exc)}"
            ) from exc
        try:
            self.sampler.mark_baseline(command.task_id)

            def on_segment(_segment: Segment, progress: float) -> None:
                value = throttle.offer(progress)
                if value is not None:
                    self.outbox.send(TaskProgress(command.task_id, command.lease_token, value))

            samples = np.asarray(audio, dtype=np.float32)
            transcribe: Callable[..., Transcript] = model.transcribe
            if accepts(transcribe, "priority"):  # the batch admits urgent windows first
                return transcribe(
                    samples,
                    command.options,
                    on_segment,
                    running.stop.is_set,
                    priority=command.priority,
                )
            return transcribe(samples, command.options, on_segment, running.stop.is_set)
        finally:
            self.models.release(key)

    def _failure(
        self, running: _Running, exc: BaseException, decoding: bool, peak: int | None
    ) -> TaskFailed:
        command = running.command
        kind = classify_failure(exc, decoding=decoding)
        error = describe(exc)
        if kind is FailureKind.CANCELLED and running.shutting_down:
            kind, error = FailureKind.TRANSIENT, "worker shut down while the task ran"
        elif kind is FailureKind.TRANSIENT:
            log.error("task %s failed", command.task_id, exc_info=exc)
        if kind is FailureKind.OUT_OF_MEMORY:
            self.memory.release_cached()
        log.info("task %s failed (%s): %s", command.task_id, kind.value, error)
        return TaskFailed(command.task_id, command.lease_token, kind, error, peak_bytes=peak)

    # audio
    def _read_audio(self, ref: str, priority: int) -> object:
        """Decode the task's audio, read through the audio store (PostgreSQL audio is spooled
        to a temporary file under the node's data directory first)."""
        try:
            in_pg = ref.startswith(PG_PREFIX)
            store = self._audio_stores.get(in_pg)
            if store is None:
                store = audio_store_for(
                    ref, store_url=self.settings.store_url, audio_dir=self.settings.audio_dir
                )
                self._audio_stores[in_pg] = store
        except AudioUnavailable:
            raise
        except Exception as exc:
            raise AudioUnavailable(f"cannot open the audio store: {describe(exc)}") from exc
        with spool(store, ref, Path(self.settings.data_dir) / "spool") as path:
            return self.audio.decode(str(path), priority)

    # models
    def _engine(self, name: str) -> Engine:
        from gpuscribe.workers.engines.registry import create_engine

        engine = self._engines.get(name)
        if engine is None:
            engine = create_engine(name, self.settings)
            self._engines[name] = engine
        return engine

    def _load_model(self, key: ModelKey) -> LoadedModel:
        engine = self._engine(key.engine)
        before = self.memory.held_bytes()
        started = time.monotonic()
        rows = self._batch_rows.get(key, 0)
        load: Callable[..., LoadedModel] = engine.load
        if rows and accepts(load, "batch_rows"):
            model = load(key.model, self.device, key.compute_type, batch_rows=rows)
        else:
            model = load(key.model, self.device, key.compute_type)
        seconds = time.monotonic() - started
        measured = self.memory.held_bytes() - before
        weights = measured if measured > 0 else model.weights_bytes
        if self.device.kind is DeviceKind.CUDA and hasattr(model, "cache_bytes"):
            # A batched model's cache and what its load allocated for its rows (the captured
            # steps' pool, the batcher's buffers) are charged with its batch (memory/batch.py,
            # measured so by calibration): ModelLoaded reports its parameters alone.
            weights = model.weights_bytes
        log.info("loaded %s in %.1f s: %d bytes", key, seconds, weights)
        self.outbox.send(ModelLoaded(self.device.uuid, key, weights, seconds))
        return model

    def _unload_model(self, key: ModelKey, model: LoadedModel) -> None:
        try:
            model.unload()
        finally:
            self.memory.release_cached()
            log.info("unloaded %s", key)
            self.outbox.send(ModelUnloaded(self.device.uuid, key))


# --- entry point ------------------------------------------------------------------------------
def open_device_memory(device: DeviceRef) -> DeviceMemory:
    from gpuscribe.workers.measure import CpuMemory, CudaMemory

    if device.kind is DeviceKind.CUDA:
        return CudaMemory(device.uuid)
    return CpuMemory()


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s worker[%(process)d] %(name)s: %(message)s",
        )


def worker_main(device: DeviceRef, settings: Settings, conn: Connection) -> None:
    """Target of the worker process: initialise the device, report ready, serve commands."""
    prepare_environment(device, os.environ)
    _configure_logging()
    outbox = Outbox(conn)
    memory = open_device_memory(device)
    worker = Worker(device, settings, outbox, memory)
    worker.sampler.start()
    outbox.send(WorkerReady(device.uuid, os.getpid(), memory.context_bytes))
    log.info(
        "worker ready on %s (%s), context %d bytes", device.name, device.uuid, memory.context_bytes
    )
    try:
        serve(worker, conn)
    finally:
        stuck = worker.shutdown()
        conn.close()
    if stuck:
        # A task still inside the engine cannot be stopped, and would hold the interpreter's
        # exit as long as it runs; the parent puts its task back in the queue when we end.
        log.info("%d task(s) still inside the engine: exiting without them", stuck)
        logging.shutdown()
        os._exit(0)


def serve(worker: Worker, conn: Connection) -> None:
    """Receive commands until Shutdown or the parent goes away."""
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            log.warning("the parent is gone: stopping")
            return
        if not worker.handle(command):
            log.info("shutdown requested")
            return
