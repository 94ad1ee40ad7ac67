"""`gpuscribe serve` as a real process, and small HTTP helpers to talk to it.

The service is started in a session of its own (`start_new_session=True`), so `kill()` sends
SIGKILL to its whole process group: the API process and every worker process it started, as a
power cut or an OOM killer would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

FINAL_STATES = frozenset({"completed", "failed", "cancelled"})

# Settings the caller's environment must not leak into a test service.
_DESIGN_VARS = (
    "MAX_MEMORY_UTILIZATION",
    "CALIBRATION_SAMPLE_SIZE",
    "MEMORY_CONFIDENCE_FACTOR",
    "MAX_TASKS_PER_GPU",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceError(RuntimeError):
    pass


class ServiceProcess:
    """`python -m gpuscribe serve --port P --data-dir D [--simulate-gpus S]` as a context manager.

    Output goes to `<data_dir>/serve.log`; `log_tail()` shows its end.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        simulate_gpus: str | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Iterable[str] = (),
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.simulate_gpus = simulate_gpus
        self.extra_env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.log_path = self.data_dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "gpuscribe.db"

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "gpuscribe",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.simulate_gpus:
            args += ["--simulate-gpus", self.simulate_gpus]
        return [*args, *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GPUSCRIBE_") and k not in _DESIGN_VARS
        }
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> ServiceProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise ServiceError("already running")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            # cwd: a directory without a gpuscribe.toml, so only env and flags configure it.
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=str(self.data_dir),
                start_new_session=True,
            )
        self.wait_healthy(self.start_timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise ServiceError(
                    f"gpuscribe serve exited with {code} before it was healthy; log:\n"
                    + self.log_tail()
                )
            try:
                response = httpx.get(f"{self.url}/healthz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        self.kill()
        raise ServiceError(
            f"gpuscribe serve was not healthy within {timeout:.0f} s (last: {last}); log:\n"
            + self.log_tail()
        )

    def kill(self) -> None:
        """SIGKILL to the whole process group: the service and its workers die at once."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._reap_group()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait for a clean exit; SIGKILL the group if it does not come. The exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()
        return self.proc.returncode

    def _reap_group(self) -> None:
        """Leftover workers of this process group, if the parent left any: killed."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def restart(self) -> ServiceProcess:
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- HTTP helpers -----------------------------------------------------------------------------


def post_task(
    url: str,
    path: str | os.PathLike[str] | None,
    *,
    filename: str | None = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    **fields: Any,
) -> httpx.Response:
    """POST /v1/tasks; the raw response. `fields` become form fields (None values are left out)."""
    data = {
        k: str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in fields.items()
        if v is not None
    }
    files = None
    if path is not None or content is not None:
        body = content if content is not None else Path(path).read_bytes()  # type: ignore[arg-type]
        name = filename if filename is not None else Path(path).name  # type: ignore[arg-type]
        files = {"file": (name, body, "application/octet-stream")}
    return httpx.post(
        f"{url}/v1/tasks", data=data, files=files, headers=dict(headers or {}), timeout=timeout
    )


def submit(url: str, path: str | os.PathLike[str], **fields: Any) -> dict[str, Any]:
    """POST /v1/tasks and expect 202; the task."""
    response = post_task(url, path, **fields)
    if response.status_code != 202:
        raise AssertionError(
            f"POST /v1/tasks {Path(path).name} {fields}: "
            f"{response.status_code} {response.text[:500]}"
        )
    task: dict[str, Any] = response.json()
    return task


def get_task(url: str, task_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/tasks/{task_id}", timeout=30.0)
    response.raise_for_status()
    task: dict[str, Any] = response.json()
    return task


def wait_done(url: str, task_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict[str, Any]:
    """Poll the task until it is final; the task. TimeoutError with its last state otherwise."""
    deadline = time.monotonic() + timeout
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = get_task(url, task_id)
        if task.get("state") in FINAL_STATES:
            return task
        time.sleep(poll)
    raise TimeoutError(f"task {task_id} not final after {timeout:.0f} s: {task}")


def wait_all_done(
    url: str, task_ids: Iterable[str], timeout: float = 300.0, poll: float = 0.25
) -> dict[str, dict[str, Any]]:
    """Every task final within `timeout` (one shared deadline); {id: task}."""
    pending = list(task_ids)
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30.0) as client:
        while pending:
            still: list[str] = []
            for task_id in pending:
                response = client.get(f"{url}/v1/tasks/{task_id}")
                response.raise_for_status()
                task = response.json()
                if task.get("state") in FINAL_STATES:
                    done[task_id] = task
                else:
                    still.append(task_id)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    sample = {t: get_task(url, t).get("state") for t in pending[:10]}
                    raise TimeoutError(
                        f"{len(pending)} tasks not final after {timeout:.0f} s, e.g. {sample}"
                    )
                time.sleep(poll)
    return done


def error_message(response: httpx.Response) -> str:
    """The `error.message` of a JSON error answer; AssertionError if the body has another shape."""
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(
            f"{response.status_code} answer is not JSON: {response.text[:300]!r}"
        ) from exc
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        raise AssertionError(f"{response.status_code} answer lacks error.message: {body!r}")
    message: str = error["message"]
    return message


def list_tasks(url: str, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """GET /v1/tasks?state=&limit= (newest first)."""
    params: dict[str, Any] = {"limit": limit}
    if state is not None:
        params["state"] = state
    response = httpx.get(f"{url}/v1/tasks", params=params, timeout=30.0)
    response.raise_for_status()
    body = response.json()
    tasks: list[dict[str, Any]] = body["tasks"] if isinstance(body, dict) else body
    return tasks


def seconds(timestamp: str | float | None) -> float | None:
    """A task time (ISO 8601, `...Z`, or seconds since the epoch) as seconds since the epoch."""
    if timestamp is None:
        return None
    if isinstance(timestamp, int | float):
        return float(timestamp)
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
