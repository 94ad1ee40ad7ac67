"""Several machines, one PostgreSQL, nothing else shared (issue 11), as three node processes on
this machine:

- `node-api`: `gpuscribe serve --no-workers` (the API alone),
- `node-b`: `gpuscribe worker` (CPU workers, no API),
- `node-c`: `gpuscribe serve` (API and CPU workers),

each with a data directory of its own that the others cannot see: every node runs in a mount
namespace of its own (`unshare -m`) where a tmpfs covers the other nodes' directories. They
start at the same moment on an empty database (the migrations run once, under the advisory
lock). Real speech sent to the API-only node is transcribed by real faster-whisper tiny.en on
the others; node-b is SIGKILLed (its whole process group) while it transcribes, and its task
completes on node-c once its lease ends, exactly once; both API nodes serve every result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.audio import AudioSet
from support.postgres import fresh_database, postgres_available, require_postgres
from support.server import free_port, submit, wait_all_done
from support.wer import word_error_rate

pytestmark = pytest.mark.slow

LEASE_SECONDS = 4
NODE_ENV = {
    "CUDA_VISIBLE_DEVICES": "",  # CPU workers: faster-whisper tiny.en
    "GPUSCRIBE_CPU_THREADS": "1",
    "GPUSCRIBE_CPU_MAX_TASKS": "1",  # two worker nodes x one task: two cores
    "GPUSCRIBE_LEASE_SECONDS": str(LEASE_SECONDS),
    "GPUSCRIBE_HEARTBEAT_SECONDS": "1",
    "GPUSCRIBE_RETRY_BASE_SECONDS": "0.2",
    "GPUSCRIBE_SCHEDULER_INTERVAL_SECONDS": "0.1",
}


def can_unshare() -> bool:
    """Root, with `unshare` and `mount`: each node can get a mount namespace of its own."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


class Node:
    """One node process, in a session (process group) and a mount namespace of its own."""

    def __init__(self, name: str, root: Path, args: list[str], store: str) -> None:
        self.name = name
        self.root = root
        self.data_dir = root / name
        self.data_dir.mkdir(parents=True)
        self.port = free_port()
        self.args = args
        self.store = store
        self.log_path = root / f"{name}.log"  # outside every data directory: readable after
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hide_others(self, others: list[Node]) -> str:
        """Shell commands that cover the other nodes' data directories with an empty tmpfs."""
        return "; ".join(f"mount -t tmpfs -o size=1m tmpfs '{o.data_dir}'" for o in others)

    def start(self, others: list[Node]) -> None:
        command = [
            sys.executable, "-m", "gpuscribe", *self.args, "--data-dir", str(self.data_dir),
            "--store", self.store, "--node-name", self.name, "--log-level", "info",
        ]  # fmt: skip
        if "serve" in self.args:
            command += ["--host", "127.0.0.1", "--port", str(self.port)]
        script = f"{self.hide_others(others)}; exec {' '.join(_quote(c) for c in command)}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSCRIBE_")}
        env.update(NODE_ENV, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=str(self.data_dir), start_new_session=True,
            )  # fmt: skip

    def sees(self, path: Path) -> bool:
        """Whether `path` exists as this node sees it (in a namespace made like the node's)."""
        assert self.proc is not None
        probe = subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", "test", "-e", str(path)], check=False
        )
        return probe.returncode == 0

    def kill(self) -> None:
        """SIGKILL to the node's whole process group: the node and its worker processes."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name}\n" + "\n".join(text.splitlines()[-lines:])


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Node]]:
    require_postgres(postgres_available())
    if not can_unshare() or not shutil.which("nsenter"):
        pytest.skip("needs root with unshare -m and nsenter: each node hides the others' data")
    with fresh_database() as url:
        root = tmp_path / "nodes"
        nodes = {
            "node-api": Node("node-api", root, ["serve", "--no-workers"], url),
            "node-b": Node("node-b", root, ["worker"], url),
            "node-c": Node("node-c", root, ["serve"], url),
        }
        try:
            for node in nodes.values():  # at once, on an empty database
                node.start([o for o in nodes.values() if o is not node])
            yield nodes
        finally:
            for node in nodes.values():
                node.stop()


def wait_until(what: str, check: Any, timeout: float, nodes: dict[str, Node]) -> Any:
    deadline = time.monotonic() + timeout
    while True:  # checked at least once: a deadline already past still looks at the state
        with contextlib.suppress(httpx.HTTPError):
            found = check()
            if found:
                return found
        if time.monotonic() >= deadline:
            break
        for node in nodes.values():
            if node.proc is not None and node.proc.poll() is not None and node.name != "node-b":
                raise AssertionError(f"{node.name} exited\n" + node.log_tail())
        time.sleep(0.2)
    logs = "\n".join(n.log_tail() for n in nodes.values())
    raise AssertionError(f"not within {timeout:.0f} s: {what}\n{logs}")


def gpus(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/v1/gpus", timeout=10.0)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["gpus"]
    return found


def test_three_nodes_share_nothing_but_postgres(cluster: dict[str, Node], audio: AudioSet) -> None:
    api, b, c = cluster["node-api"], cluster["node-b"], cluster["node-c"]
    wait_until(
        "both worker nodes show in the API node's /v1/gpus",
        lambda: {g["node"] for g in gpus(api.url)} == {"node-b", "node-c"},
        120.0,
        cluster,
    )
    for node in cluster.values():  # no node can see another's data directory
        own = node.data_dir / "marker"
        own.write_text("private")  # written from outside every namespace
        assert node.sees(own)
        for other in cluster.values():
            if other is not node:
                assert not other.sees(own), f"{other.name} sees {node.name}'s data directory"
        own.unlink()
    view = gpus(api.url)
    assert all(g["heartbeat_at"] and g["kind"] == "cpu" for g in view)
    shown = subprocess.run(
        [sys.executable, "-m", "gpuscribe", "gpus", "--server", api.url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert shown[1].split()[:3] == ["NODE", "HEARTBEAT", "GPU"], shown
    assert [line.split()[0] for line in shown[2:]] == ["node-b", "node-c"], shown

    long_text = " ".join(audio.sentences)
    jobs = [(audio.long_speech(repeats=1), long_text) for _ in range(2)]
    jobs += [(clip.path, clip.text) for clip in (audio.speech(i) for i in range(4))]
    ids = {submit(api.url, path, language="en")["id"]: text for path, text in jobs}
    assert not [p for p in (api.data_dir / "audio").glob("*") if p.is_file()], (
        "the API node kept audio on its disk: it belongs in PostgreSQL"
    )

    def running_on_b() -> str | None:
        tasks = httpx.get(f"{api.url}/v1/tasks", params={"state": "running"}, timeout=10)
        tasks.raise_for_status()
        mine = [t for t in tasks.json()["tasks"] if t["node"] == "node-b"]
        return mine[0]["id"] if mine else None

    victim = wait_until("node-b runs a task", running_on_b, 120.0, cluster)
    time.sleep(1.0)  # into its transcription
    b.kill()
    killed_at = time.monotonic()

    done = wait_all_done(api.url, ids, timeout=400.0)
    failures = []
    with httpx.Client(timeout=30.0) as client:
        for task_id, text in ids.items():
            task = done[task_id]
            if task["state"] != "completed":
                failures.append(f"{task_id}: {task['state']} {task['error']}")
                continue
            history = client.get(f"{api.url}/v1/tasks/{task_id}").json()["history"]
            completions = [e for e in history if e["state"] == "completed"]
            assert len(completions) == 1, f"{task_id} completed {len(completions)} times"
            assert task["node"] in ("node-b", "node-c")
            for url in (api.url, c.url):  # any API node answers for any task
                result = client.get(f"{url}/v1/tasks/{task_id}/result", params={"format": "text"})
                assert result.status_code == 200, result.text
                wer = word_error_rate(text, result.text)
                assert wer < 0.35, f"{task_id} on {task['node']}: WER {wer:.2f}: {result.text!r}"
    assert not failures, failures

    moved = done[victim]
    assert moved["node"] == "node-c" and moved["attempts"] == 2, moved
    with httpx.Client(timeout=30.0) as client:
        history = client.get(f"{c.url}/v1/tasks/{victim}").json()["history"]
    details = [e["detail"] or "" for e in history]
    assert any(d.startswith("attempt 1 on node-b") for d in details), details
    assert "lease expired" in details and any(d.startswith("attempt 2 on node-c") for d in details)

    # node-b stopped heart-beating: it left the view when its lease ended.
    wait_until(
        "node-b leaves /v1/gpus once its lease ends",
        lambda: {g["node"] for g in gpus(c.url)} == {"node-c"},
        max(0.0, killed_at + LEASE_SECONDS + 30.0 - time.monotonic()),
        cluster,
    )
    queue = httpx.get(f"{api.url}/v1/queue", timeout=10.0).json()
    assert queue["state"]["completed"] == len(ids), queue
