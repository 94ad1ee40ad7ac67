"""Accepted submissions per second: N submissions of a small real WAV from C concurrent clients.

    .venv/bin/python benchmarks/submissions.py                  # starts its own service
    .venv/bin/python benchmarks/submissions.py --server URL     # against a running one

Without `--server` it starts `gpuscribe serve` on simulated GPUs (`--simulate-gpus`, default
1x24GiB) with a fresh SQLite store in a temporary data dir, so that what is measured is the
submission path alone: multipart streaming, probing the audio, fsync of the file, the durable
SQLite commit, the 202. The clients run on the same machine (asyncio + httpx), which they share
with the service. Prints accepted per second (target: 300 or more), 429s, other answers and
latency percentiles; `--json` prints the same as JSON. Speed is printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TARGET_PER_SECOND = 300


def small_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """A real 16-bit mono WAV: a quiet 440 Hz tone."""
    frames = int(seconds * rate)
    samples = (int(3000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return buffer.getvalue()


@dataclass
class LoadResult:
    total: int
    concurrency: int
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    accepted_ids: list[str] = field(default_factory=list)
    retry_after: set[str] = field(default_factory=set)

    @property
    def accepted(self) -> int:
        return self.statuses.get(202, 0)

    @property
    def accepted_per_second(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "submissions": self.total,
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "accepted": self.accepted,
            "accepted_per_second": round(self.accepted_per_second, 1),
            "refused_429": self.statuses.get(429, 0),
            "other_statuses": {str(k): v for k, v in self.statuses.items() if k not in (202, 429)},
            "errors": dict(self.errors),
            "latency_p50_ms": round(self.percentile(50) * 1000, 1),
            "latency_p95_ms": round(self.percentile(95) * 1000, 1),
            "latency_p99_ms": round(self.percentile(99) * 1000, 1),
            "target_per_second": TARGET_PER_SECOND,
        }


async def run_load(
    url: str, body: bytes, total: int, concurrency: int, idempotency: bool = True
) -> LoadResult:
    """`total` submissions by `concurrency` clients, each sending one at a time over its own
    keep-alive HTTP/1.1 connection.

    The clients share this machine's CPUs with the service, so they are kept as cheap as
    possible: the multipart body is encoded once, and requests are written and answers read
    with plain asyncio streams (httpx costs ~4 ms of CPU per request, which would be measured
    instead of gpuscribe)."""
    result = LoadResult(total, concurrency)
    remaining = iter(range(total))
    host, port = _host_port(url)
    boundary = uuid.uuid4().hex
    payload = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="bench.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    ).encode()
    payload += body + f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(payload)}\r\n"
    )

    async def client() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        for _ in remaining:
            key = f"Idempotency-Key: bench-{uuid.uuid4()}\r\n" if idempotency else ""
            started = time.perf_counter()
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(head.encode() + key.encode() + b"\r\n" + payload)
                status, headers, answer = await asyncio.wait_for(_read_response(reader), 120)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                result.errors[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] += 1
            if status == 202:
                result.accepted_ids.append(json.loads(answer)["id"])
            elif status == 429 and "retry-after" in headers:
                result.retry_after.add(headers["retry-after"])
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def _host_port(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        raise SystemExit(f"--server must be an http:// URL, not {url}")
    return parsed.host, parsed.port or 80


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length body (what uvicorn sends for these)."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ValueError(f"answer {status} without Content-Length: {headers}")
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


# --- a service of its own ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def own_service(simulate_gpus: str, env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """`gpuscribe serve` on simulated GPUs in a temporary data dir; its URL and log."""
    data_dir = Path(tempfile.mkdtemp(prefix="gpuscribe-bench-"))
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPUSCRIBE_")}
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpuscribe",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--simulate-gpus",
            simulate_gpus,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**clean, **env},
        cwd=data_dir,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"gpuscribe serve exited: {(data_dir / 'serve.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("gpuscribe serve was not healthy within 60 s")
            time.sleep(0.1)
        yield url, data_dir / "serve.log"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--server", help="a running service (default: start one)")
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--audio-seconds", type=float, default=1.0)
    parser.add_argument("--simulate-gpus", default="1x24GiB")
    parser.add_argument(
        "--max-queue-length",
        type=int,
        help="GPUSCRIBE_MAX_QUEUE_LENGTH of the started service (default: its own)",
    )
    parser.add_argument("--warmup", type=int, default=50, help="submissions before measuring")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    body = small_wav(args.audio_seconds)
    env = {"GPUSCRIBE_SIMULATION_SPEED": "1000"}
    if args.max_queue_length:
        env["GPUSCRIBE_MAX_QUEUE_LENGTH"] = str(args.max_queue_length)
    with contextlib.ExitStack() as stack:
        log: Path | None = None
        if args.server:
            url = args.server
        else:
            url, log = stack.enter_context(own_service(args.simulate_gpus, env))
        if args.warmup:
            asyncio.run(run_load(url, body, args.warmup, min(args.concurrency, args.warmup)))
        result = asyncio.run(run_load(url, body, args.submissions, args.concurrency))
        if (result.errors or set(result.statuses) - {202, 429}) and log is not None:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print("service log (end):\n" + "\n".join(tail), file=sys.stderr)
    summary = summary_with_context(result, len(body), url if args.server else "own service")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['accepted']} of {summary['submissions']} submissions accepted in "
            f"{summary['seconds']} s from {summary['concurrency']} concurrent clients "
            f"({summary['wav_bytes']} B WAV each) on {summary['cpus']} CPUs"
        )
        print(
            f"accepted per second: {summary['accepted_per_second']} (target >= {TARGET_PER_SECOND})"
        )
        print(
            f"429: {summary['refused_429']}  other: {summary['other_statuses']}  "
            f"errors: {summary['errors']}"
        )
        print(
            f"latency p50 {summary['latency_p50_ms']} ms, p95 {summary['latency_p95_ms']} ms, "
            f"p99 {summary['latency_p99_ms']} ms"
        )
    return 0


def summary_with_context(result: LoadResult, wav_bytes: int, server: str) -> dict[str, Any]:
    return {**result.summary(), "wav_bytes": wav_bytes, "server": server, "cpus": os.cpu_count()}


if __name__ == "__main__":
    raise SystemExit(main())
