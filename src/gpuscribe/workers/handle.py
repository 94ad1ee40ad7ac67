"""The parent's side of a worker process: start it, send commands, forward its events, restart it.

Each incarnation of the child has its own pipe and reader thread. The reader forwards events to
the sink and, at the pipe's end, fails every task the child was running (TRANSIENT, or TIMEOUT
for the task whose `kill_task` ended it), then starts the next incarnation: every task handed to
`run` ends with exactly one TaskCompleted or TaskFailed.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from gpuscribe.config import Settings
from gpuscribe.memory.types import ModelKey
from gpuscribe.workers.base import EventSink
from gpuscribe.workers.messages import (
    CancelTask,
    DeviceRef,
    FailureKind,
    RunTask,
    Shutdown,
    TaskCompleted,
    TaskFailed,
    UnloadModel,
    WorkerCommand,
    WorkerEvent,
    WorkerReady,
)
from gpuscribe.workers.process import SHUTDOWN_JOIN_SECONDS, worker_main

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
TERMINATE_GRACE_SECONDS = 2.0
# The worker gives its running tasks SHUTDOWN_JOIN_SECONDS to stop; the parent waits longer.
STOP_TIMEOUT_SECONDS = SHUTDOWN_JOIN_SECONDS + 5.0


def ended(process: BaseProcess, timeout: float) -> bool:
    """Whether the process has ended, waiting at most `timeout`. Read from its sentinel, which
    says so even when another thread (the reader's join) reaps the process first: then
    `is_alive()` can still say True for a moment, and a clean exit looked like a hang."""
    sentinel = process.sentinel
    return bool(multiprocessing.connection.wait([sentinel], timeout))


def worker_entry(device: DeviceRef, settings: Settings, conn: Connection) -> None:
    """The worker process's target: `worker_main`, deaf to SIGINT. Ctrl-C in a terminal goes
    to the whole process group; the parent alone stops its workers, in order (Shutdown, then
    their tasks back to the queue), so a worker must not die of it with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_main(device, settings, conn)


def restart_delay(base_seconds: float, failed_starts: int) -> float:
    """Wait before a restart: the base, doubled for each start in a row that never got ready,
    at most MAX_BACKOFF_SECONDS."""
    return min(MAX_BACKOFF_SECONDS, base_seconds * float(2 ** min(failed_starts, 16)))


def orphan_failure(
    task_id: str, *, stopping: bool, killed_for: str | None, exitcode: int | None
) -> tuple[FailureKind, str]:
    """How a task is reported when its worker process ended under it."""
    if stopping:
        return FailureKind.TRANSIENT, "worker stopped"
    if killed_for == task_id:
        return FailureKind.TIMEOUT, "task did not stop after its timeout: worker restarted"
    if killed_for is not None:
        return FailureKind.TRANSIENT, "worker restarted"
    return FailureKind.TRANSIENT, f"worker process died (exit code {exitcode})"


@dataclass(slots=True)
class _Incarnation:
    """One run of the child process."""

    process: BaseProcess
    conn: Connection
    ready: bool = False
    killed_for: str | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    reader: threading.Thread | None = None


class ProcessWorker:
    """`WorkerHandle` of one device, backed by a spawned worker process."""

    def __init__(
        self,
        device: DeviceRef,
        settings: Settings,
        sink: EventSink,
        *,
        restart_backoff_seconds: float = 1.0,
    ) -> None:
        self.device = device
        self._settings = settings
        self._sink = sink
        self._backoff = restart_backoff_seconds
        self._lock = threading.Lock()
        self._current: _Incarnation | None = None
        self._running: dict[str, str] = {}  # task id -> lease token
        self._failed_starts = 0
        self._stopping = threading.Event()

    # WorkerHandle ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._stopping.clear()
            if self._current is None:
                self._spawn()

    def run(self, command: RunTask) -> None:
        with self._lock:
            current = None if self._stopping.is_set() else self._current
            if current is not None:
                self._running[command.task_id] = command.lease_token
        if current is None:
            self._emit_soon(
                TaskFailed(
                    command.task_id,
                    command.lease_token,
                    FailureKind.TRANSIENT,
                    "worker not running",
                )
            )
            return
        self._send(current, command)

    def cancel(self, task_id: str) -> None:
        with self._lock:
            current = self._current if task_id in self._running else None
        if current is not None:
            self._send(current, CancelTask(task_id))

    def unload(self, model: ModelKey) -> None:
        with self._lock:
            current = self._current
        if current is not None:
            self._send(current, UnloadModel(model))

    def kill_task(self, task_id: str) -> None:
        with self._lock:
            current = self._current
            if current is None or task_id not in self._running:
                return
            current.killed_for = task_id
        log.warning(
            "task %s ignored its cancel: killing worker pid %s", task_id, current.process.pid
        )
        current.process.kill()

    def alive(self) -> bool:
        with self._lock:
            current = self._current
        return current is not None and current.ready and current.process.is_alive()

    def pids(self) -> set[int]:
        with self._lock:
            current = self._current
        if current is None or current.process.pid is None:
            return set()
        return {current.process.pid}

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        self._stopping.set()
        with self._lock:
            current = self._current
            running = len(self._running)
        if current is None:
            return
        if running:
            log.info(
                "worker pid %s: stopping its %d running task(s); they go back to the queue",
                current.process.pid,
                running,
            )
        self._send(current, Shutdown())
        process = current.process
        if not ended(process, timeout):
            log.warning(
                "worker pid %s did not shut down in %.0f s: terminating", process.pid, timeout
            )
            process.terminate()
            if not ended(process, TERMINATE_GRACE_SECONDS):
                process.kill()
        process.join(TERMINATE_GRACE_SECONDS)
        reader = current.reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=TERMINATE_GRACE_SECONDS)

    def running_tasks(self) -> set[str]:
        """Tasks handed to the worker that have not ended yet."""
        with self._lock:
            return set(self._running)

    # the child ---------------------------------------------------------------------------------
    def _spawn(self) -> None:
        """Start an incarnation (called with the lock held)."""
        context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe(duplex=True)
        process = context.Process(
            target=worker_entry,
            args=(self.device, self._settings, child_conn),
            name=f"gpuscribe-worker-{self.device.index}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        current = _Incarnation(process, parent_conn)
        current.reader = threading.Thread(
            target=self._read,
            args=(current,),
            name=f"worker-{self.device.index}-events",
            daemon=True,
        )
        self._current = current
        current.reader.start()
        log.info("started worker pid %s for %s", process.pid, self.device.uuid)

    def _send(self, current: _Incarnation, command: WorkerCommand) -> None:
        with current.send_lock:
            try:
                current.conn.send(command)
            except (OSError, ValueError) as exc:
                log.warning(
                    "cannot send %s to the worker (%s): it is ending", type(command).__name__, exc
                )

    def _read(self, current: _Incarnation) -> None:
        while True:
            try:
                event = current.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:
                log.exception("unreadable message from worker pid %s", current.process.pid)
                break
            self._forward(current, event)
        current.conn.close()
        self._after_exit(current)

    def _forward(self, current: _Incarnation, event: WorkerEvent) -> None:
        if isinstance(event, WorkerReady):
            current.ready = True
            with self._lock:
                self._failed_starts = 0
        elif isinstance(event, TaskCompleted | TaskFailed):
            with self._lock:
                tracked = self._running.pop(event.task_id, None) is not None
            if not tracked:
                log.warning("dropping a final event for untracked task %s", event.task_id)
                return
        self._emit(event)

    def _after_exit(self, current: _Incarnation) -> None:
        current.process.join(TERMINATE_GRACE_SECONDS)
        orphans, stopping, failed_starts = self._retire(current)
        exitcode = current.process.exitcode
        if not stopping:
            log.error(
                "worker pid %s for %s ended (exit code %s)",
                current.process.pid,
                self.device.uuid,
                exitcode,
            )
        for task_id, lease in orphans.items():
            kind, error = orphan_failure(
                task_id, stopping=stopping, killed_for=current.killed_for, exitcode=exitcode
            )
            self._emit(TaskFailed(task_id, lease, kind, error))
        if stopping:
            return
        killed = current.killed_for is not None
        self._restart_after(0.0 if killed else restart_delay(self._backoff, failed_starts))

    def _retire(self, current: _Incarnation) -> tuple[dict[str, str], bool, int]:
        """Forget an ended incarnation: (its running tasks, stopping?, failed starts in a row)."""
        with self._lock:
            if self._current is current:
                self._current = None
            orphans, self._running = self._running, {}
            if not current.ready:
                self._failed_starts += 1
            return orphans, self._stopping.is_set(), self._failed_starts

    def _restart_after(self, delay: float) -> None:
        if self._stopping.wait(delay):
            return
        with self._lock:
            if self._current is None and not self._stopping.is_set():
                self._spawn()

    # events ------------------------------------------------------------------------------------
    def _emit(self, event: WorkerEvent) -> None:
        try:
            self._sink(event)
        except Exception:
            log.exception("the event sink failed on %r", event)

    def _emit_soon(self, event: WorkerEvent) -> None:
        """Report from a thread of our own: the caller may hold locks the sink takes."""
        threading.Thread(target=self._emit, args=(event,), daemon=True).start()
