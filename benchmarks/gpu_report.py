"""Measurements that only real GPUs can give (run on a GPU machine; figures go to --out).

  calibrate  measure a grid of models with `gpuscribe calibrate`'s machinery and write the profile
             to ship for this GPU model (batched models: batches of several sizes, every row in
             use, at 1 and 5 beams; others: batch x beam)
  validate   measure configurations the grid did not sample and compare them with the estimate
             the profile gives (target: estimate >= measured and <= 1.15 x measured)
  rescore    a validation's measurements against the estimate today's code gives (no GPU)
  stream     run `gpuscribe serve` on chosen GPUs, submit a mixed stream of tasks, sample NVML
             (20 Hz) and the ledger, and report out-of-memory failures, peaks against the cap,
             throughput, and a plot of admitted against used memory

Random-weight models (benchmark-only mode) decode the full 224 tokens per 30 s window: the
worst case, so peaks are real upper bounds. The outputs are not transcripts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import wave
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gpuscribe.config import load_settings
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.memory.estimator import Estimator
from gpuscribe.memory.profiles import REFERENCE_CONTEXT_BYTES, GpuProfile, ProfileBook
from gpuscribe.memory.types import GIB, ProfileKey
from gpuscribe.node.calibrate import calibration_devices, profile_from_rows, run_calibration
from gpuscribe.telemetry.base import DeviceKind
from gpuscribe.workers.calibrate import WINDOWS_PER_TASK, CalibrationRow

GRID_MODELS = ["tiny", "base", "small", "medium", "large-v3", "large-v3-turbo"]
GRID_BATCHES = [1, 4, 16]
GRID_BEAMS = [1, 5]
# Not sampled by the grid: other models of the same shapes, other batch and beam sizes.
VALIDATE_MODELS = ["large-v2", "medium.en", "small.en"]
VALIDATE_BATCHES = [2, 8]
VALIDATE_BEAMS = [1, 3]
# A batched model (the transformers engine on a GPU) is calibrated at a quarter, half and all of
# its rows (64, 128 and 256 on an H200) at 1 and 5 beams; validated at sizes between and beyond
# those (beyond: larger batches than any calibration measured), at 1 and 3 beams.
VALIDATE_BATCH_SIZES = [96, 384]
PRIORITIES = ["urgent", "high", "normal", "low"]
FINAL_STATES = ("completed", "failed", "cancelled")
STREAM_MODELS = ["tiny", "base", "small", "medium", "large-v3", "large-v3-turbo"]


def _settings(devices: str, db: Path) -> Any:
    return load_settings(
        flags={"devices": devices, "store": f"sqlite:///{db}", "benchmark_only": True,
               "default_engine": "transformers"},
    )  # fmt: skip


def cmd_calibrate(args: argparse.Namespace) -> None:
    """The grid's models (or --models), in one process per GPU. With --rows-file the rows of
    earlier runs in that file are kept beside this run's, and the profile is made of them all:
    a grid split over several calls of a time-limited machine makes one profile."""
    out = Path(args.out)
    models = args.models.split(",") if args.models else GRID_MODELS
    rows = run_calibration(
        _settings(args.devices, out / "calibration.db"), models, GRID_BATCHES, GRID_BEAMS
    )
    kept = Path(args.rows_file) if args.rows_file else None
    if kept is not None and kept.exists():
        rows = json.loads(kept.read_text()) + rows
    if kept is not None:
        kept.write_text(json.dumps(rows, indent=1))
    (out / "calibration_rows.json").write_text(json.dumps(rows, indent=1))
    profile = profile_from_rows([CalibrationRow(**r) for r in rows])
    (out / "profile.json").write_text(json.dumps(profile, indent=1) + "\n")
    for r in rows:
        size = _size(r)
        print(
            f"{r['model']:>15} {size} working {r['working_bytes'] / GIB:6.2f} GiB  weights "
            f"{r['weights_bytes'] / GIB:5.2f}  ctx {r['context_bytes'] / GIB:4.2f}  peak "
            f"{r['peak_bytes'] / GIB:6.2f}  load {r['load_bytes'] / GIB:6.2f}  "
            f"{r['seconds']:5.1f} s  {r['error'] or ''}",
            flush=True,
        )


def _size(row: dict[str, Any]) -> str:
    """A measured configuration's size as the reports print it."""
    if row["batch_rows"]:
        return f"rows {row['batch_rows']:<4} beams {row['beams']}"
    return f"b{row['batch_size']:<3} k{row['beam_size']}"


def cmd_validate(args: argparse.Namespace) -> None:
    """Parts reported as soon as each ends (a time limit then keeps the figures measured so far):
    on a GPU, where every model runs as a batch, other models of the grid's shapes and the
    grid's models, at batch sizes and a beam count calibration did not measure; elsewhere the
    task grid's held-out models and sizes."""
    out = Path(args.out)
    profile = GpuProfile.from_json(json.loads(Path(args.profile).read_text()))
    settings = _settings(args.devices, out / "validate.db")
    batched_models = ["tiny", "small.en", "medium.en", "large-v3-turbo", "large-v3", "large-v2"]
    sizes = [int(n) for n in args.sizes.split(",")]
    parts: list[tuple[list[str], list[int], list[int], list[int] | None]] = [
        # the large models' cache at 384 rows is past an 80 GB GPU
        (batched_models if size < 256 else batched_models[:4], GRID_BATCHES, VALIDATE_BEAMS,
         [size])
        for size in sizes
    ] if _on_cuda(settings) else [
        (VALIDATE_MODELS, GRID_BATCHES, GRID_BEAMS, None),
        (["tiny", "small", "large-v3", "large-v3-turbo"], VALIDATE_BATCHES, VALIDATE_BEAMS, None),
    ]  # fmt: skip
    results: list[dict[str, Any]] = []
    for models, batches, beams, sizes in parts:
        rows = run_calibration(settings, models, batches, beams, batch_sizes_of_models=sizes)
        results += _scored(profile, rows)
        _report_validation(out, results)


def _on_cuda(settings: Any) -> bool:
    """Whether the devices are real GPUs (where the transformers engine runs as a batch)."""
    return any(d.kind is DeviceKind.CUDA for d in calibration_devices(settings))


def cmd_rescore(args: argparse.Namespace) -> None:
    """A validation's measured rows against the estimate the current code gives from a profile
    (the estimate is a pure function: no GPU needed), written as `validation.json` in --out."""
    profile = GpuProfile.from_json(json.loads(Path(args.profile).read_text()))
    measured = json.loads(Path(args.validation).read_text())["rows"]
    fields = ("measured_total_bytes", "estimate_total_bytes", "ratio", "within")
    rows = [{k: v for k, v in r.items() if k not in fields} for r in measured]
    _report_validation(Path(args.out), _scored(profile, rows))


def _scored(profile: GpuProfile, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measured rows against the profile's estimates; a row that failed is kept, unscored."""
    return [_compare(profile, r) for r in rows if not r["error"]] + [
        {**r, "within": None} for r in rows if r["error"]
    ]


def _compare(profile: GpuProfile, row: dict[str, Any]) -> dict[str, Any]:
    """A measured configuration against the estimate of the profile for it: for a batch, what
    the ledger would charge a model resident at that size with the measured tasks running
    (context, weights, batch, and the tasks' own working figures) against the process's peak."""
    book = ProfileBook([profile])
    if row["batch_rows"]:
        estimate = _batch_estimate(book, row)
        measured = row["peak_bytes"]
    else:
        key = ProfileKey(profile.gpu_name_contains, row["engine"], row["model"],
                         row["compute_type"], row["batch_size"], row["beam_size"])  # fmt: skip
        est = book.lookup(key)
        estimate = est.total_bytes if est else None
        measured = row["context_bytes"] + row["weights_bytes"] + row["working_bytes"]
    ratio = estimate / measured if estimate and measured else None
    return {
        **row,
        "measured_total_bytes": measured,
        "estimate_total_bytes": estimate,
        "ratio": ratio,
        "within": ratio is not None and 1.0 <= ratio <= 1.15,
    }


def _batch_estimate(book: ProfileBook, row: dict[str, Any]) -> int:
    rows, beams = row["batch_rows"], row["beams"]
    estimator = Estimator(
        CalibrationBook(1, 1.2), book, confidence_factor=1.2,
        cuda_context_bytes=REFERENCE_CONTEXT_BYTES, batch_rows=rows,
    )  # fmt: skip
    windows = max(1, rows // beams)
    tasks = [  # the tasks calibration ran the windows as, each asking for no word timestamps
        estimator.estimate(
            ProfileKey(row["gpu_name"], row["engine"], row["model"], row["compute_type"],
                       size, beams),
            size * 30.0, device_kind=DeviceKind.CUDA, word_timestamps=False,
        )
        for first in range(0, windows, WINDOWS_PER_TASK)
        for size in [min(WINDOWS_PER_TASK, windows - first)]
    ]  # fmt: skip
    once = tasks[0].context_bytes + tasks[0].resident_bytes  # the worker and its model
    return once + sum(t.working_bytes for t in tasks)


def _report_validation(out: Path, results: list[dict[str, Any]]) -> None:
    measured = [r for r in results if r["within"] is not None]
    good = sum(1 for r in measured if r["within"])
    ratios = [r["ratio"] for r in measured if r["ratio"]]
    summary = {
        "configs": len(measured),
        "within_1_to_1_15": good,
        "fraction": good / max(1, len(measured)),
        "ratio_min": min(ratios, default=None),
        "ratio_max": max(ratios, default=None),
        "not_loaded": len(results) - len(measured),
    }
    (out / "validation.json").write_text(
        json.dumps({"summary": summary, "rows": results}, indent=1)
    )
    for r in results:
        size = _size(r)
        if r["within"] is None:
            print(f"{r['model']:>15} {size} {r['error']}")
            continue
        print(
            f"{r['model']:>15} {size} measured {r['measured_total_bytes'] / GIB:6.2f} GiB "
            f"estimate {(r['estimate_total_bytes'] or 0) / GIB:6.2f} ratio {r['ratio'] or 0:5.3f}"
        )
    print("validation:", summary, flush=True)


# --- stream ---------------------------------------------------------------------------------
def _write_wav(path: Path, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(int(seconds * 16000)) * 2000).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())


def _stream_tasks(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """Lengths log-uniform from --min-seconds to 20 min (the shortest and longest included),
    models and beams drawn from --models and --beams, priorities in turn."""
    rng = random.Random(args.seed)
    low, high = math.log(args.min_seconds), math.log(20 * 60)
    n = args.tasks
    lengths = [args.min_seconds, 20 * 60.0] + [math.exp(rng.uniform(low, high))
                                               for _ in range(n - 2)]  # fmt: skip
    models = args.models.split(",") if args.models else STREAM_MODELS
    beams = [int(b) for b in args.beams.split(",")]
    tasks = []
    for i, seconds in enumerate(lengths):
        path = folder / f"clip{i:03d}.wav"
        _write_wav(path, round(seconds, 1), i)
        beam = rng.choice(beams)
        batch = rng.choice([b for b in (1, 2, 4, 8, 16) if b * beam <= 32])
        tasks.append(
            {
                "path": path,
                "seconds": seconds,
                "model": rng.choice(models),
                "batch_size": batch,
                "beam_size": beam,
                "priority": PRIORITIES[i % 4],
            }
        )
    return tasks


def _urgent_probe(
    url: str, folder: Path, count: int, delay: float, model: str
) -> list[dict[str, Any]]:
    """`count` urgent 30 s tasks submitted one after another into the running stream, `delay`
    seconds after it starts: how long each waits to start (claimed and handed to its engine),
    to decode (its first window in the batch, from the task's history) and to finish."""
    time.sleep(delay)
    path = folder / "urgent.wav"
    _write_wav(path, 30.0, 999)
    probes = []
    with httpx.Client(timeout=120) as client:
        for _ in range(count):
            sent = time.monotonic()
            task_id = _upload(client, url, path, priority="urgent", beam_size="1", model=model)
            started = finished = None
            while finished is None and time.monotonic() - sent < 120:
                t = client.get(f"{url}/v1/tasks/{task_id}").json()
                if started is None and t["state"] != "queued":
                    started = time.monotonic() - sent
                if t["state"] in FINAL_STATES:
                    finished = time.monotonic() - sent
                time.sleep(0.05)
            task = client.get(f"{url}/v1/tasks/{task_id}").json()
            probes.append({"to_start_s": started, "to_decode_s": _to_decode(task),
                           "to_finish_s": finished, "id": task_id})  # fmt: skip
    return probes


def _to_decode(task: dict[str, Any]) -> float | None:
    """Seconds from a task's submission to its first window in the batch (its history's
    "decoding began" line, which the batched engine's tasks have)."""
    began = [e["at"] for e in task.get("history") or [] if e.get("detail") == "decoding began"]
    if not began:
        return None
    return _epoch(began[0]) - _epoch(task["created_at"])


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class _Sampler(threading.Thread):
    """NVML at 20 Hz (no CUDA context here), and the service's ledger."""

    def __init__(self, url: str, out: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self._handles: dict[str, Any] = {}
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._handles = {pynvml.nvmlDeviceGetUUID(h): h for h in handles}
        except Exception as exc:  # no NVML (simulated GPUs): the service's own readings
            print(f"NVML unavailable ({exc}): sampling the service's device readings")
        self._url = url
        self._out = out
        self.stop = threading.Event()

    def run(self) -> None:
        client = httpx.Client(timeout=2)
        start = time.monotonic()
        tick = 0
        while not self.stop.wait(0.05):
            row: dict[str, Any] = {"t": time.monotonic() - start}
            for uuid, h in self._handles.items():
                row[f"used:{uuid}"] = self._nvml.nvmlDeviceGetMemoryInfo(h).used
            if tick % 2 == 0:
                try:
                    for g in client.get(self._url + "/v1/gpus").json()["gpus"]:
                        if not self._handles:
                            row[f"used:{g['uuid']}"] = g["memory_used_bytes"]
                        row[f"admitted:{g['uuid']}"] = g["memory_reserved_bytes"]
                        row[f"cap:{g['uuid']}"] = g["memory_cap_bytes"]
                        row[f"tasks:{g['uuid']}"] = g["tasks_running"]
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
            tick += 1
            self._out.append(row)


def _foreign(fraction: float, devices: str) -> subprocess.Popen[bytes]:
    """A process outside gpuscribe holding `fraction` of the first of `devices` (an NVML index
    or UUID; PCI bus order makes CUDA's numbering NVML's)."""
    first = devices.split(",")[0].strip() or "0"
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": first}
    code = (
        "import torch,time,sys;t=torch.cuda.get_device_properties(0).total_memory;"
        f"x=torch.empty(int(t*{fraction}),dtype=torch.uint8,device='cuda');"
        "torch.cuda.synchronize();print('held',x.numel(),flush=True);time.sleep(3600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    print("foreign process:", proc.stdout.readline().decode().strip(), "on device", first)
    return proc


def _nvml_used() -> dict[str, int]:
    """Each GPU's used memory by UUID, from NVML; empty where there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        return {pynvml.nvmlDeviceGetUUID(h): pynvml.nvmlDeviceGetMemoryInfo(h).used
                for h in handles}  # fmt: skip
    except Exception:
        return {}


def cmd_stream(args: argparse.Namespace) -> None:
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="gpuscribe-stream-"))
    tasks = _stream_tasks(args, work)
    foreign = _foreign(args.foreign, args.devices) if args.foreign > 0 else None
    used_before = _nvml_used()  # what the GPUs hold before the service starts
    port = 8800 + random.randint(0, 99)
    env = {
        **os.environ,
        "GPUSCRIBE_BENCHMARK_ONLY": "1",
        "GPUSCRIBE_DEVICES": args.devices,
        "GPUSCRIBE_DEFAULT_ENGINE": "transformers",
        "MAX_MEMORY_UTILIZATION": str(args.cap),
        "GPUSCRIBE_MAX_AUDIO_SECONDS": "7200",
        "GPUSCRIBE_TASK_TIMEOUT_SECONDS": "3000",
    }
    env["GPUSCRIBE_BENCHMARK_TOKENS"] = str(args.tokens)
    if args.max_tasks:
        env["MAX_TASKS_PER_GPU"] = str(args.max_tasks)
    if args.batch_rows:
        env["GPUSCRIBE_BATCH_ROWS"] = str(args.batch_rows)
    log = open(out / f"serve-{args.name}.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [sys.executable, "-m", "gpuscribe", "serve", "--port", str(port), "--data-dir",
         str(work / "var")], env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    samples: list[dict[str, Any]] = []
    try:
        _wait_ready(url)
        if args.warm_up:
            _warm_up(url, work, tasks[0]["model"])
        sampler = _Sampler(url, samples)
        sampler.start()
        probes: list[dict[str, Any]] = []
        prober = threading.Thread(
            target=lambda: probes.extend(
                _urgent_probe(url, work, args.urgent, args.urgent_after, tasks[0]["model"])
            ),
            daemon=True,
        )
        started = time.monotonic()
        args.started_epoch = time.time()
        if args.urgent:
            prober.start()
        ids = _submit_all(url, tasks)
        _wait_quiet(url, args.max_seconds)
        wall = time.monotonic() - started
        final = _fetch(url, ids)
        sampler.stop.set()
        sampler.join()
        metrics = httpx.get(url + "/metrics").text
    finally:
        serve.terminate()
        serve.wait(30)
        if foreign:
            foreign.kill()
    if args.urgent:
        prober.join(timeout=60)
    args.probes = probes
    _report_stream(args, out, tasks, final, samples, wall, metrics, used_before)


def _upload(client: httpx.Client, url: str, path: Path, **form: str) -> str:
    """POST one WAV file as a task with these form fields; its id."""
    with open(path, "rb") as f:
        r = client.post(url + "/v1/tasks", files={"file": (path.name, f, "audio/wav")}, data=form)
    r.raise_for_status()
    return str(r.json()["id"])


def _warm_up(url: str, folder: Path, model: str) -> None:
    """One 30 s task before the clock starts: the stream then measures a running service (its
    model loaded), not the model's load, which the report's `model_loads` counts apart."""
    path = folder / "warm-up.wav"
    _write_wav(path, 30.0, 998)
    with httpx.Client(timeout=60) as client:
        task_id = _upload(client, url, path, model=model, beam_size="1")
    started = time.monotonic()
    final = _wait_all(url, [task_id], 600)
    print(f"warm-up: {final[0]['state']} in {time.monotonic() - started:.1f} s", flush=True)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("service did not become ready")


def _submit_all(url: str, tasks: list[dict[str, Any]], clients: int = 8) -> list[str]:
    """Every task, uploaded by `clients` clients at once (a stream arrives from many users);
    ids in the tasks' order."""
    from concurrent.futures import ThreadPoolExecutor

    def submit(t: dict[str, Any]) -> str:
        with httpx.Client(timeout=120) as client:
            return _upload(
                client, url, t["path"], model=t["model"], batch_size=str(t["batch_size"]),
                beam_size=str(t["beam_size"]), priority=t["priority"],
            )  # fmt: skip

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(submit, tasks))


def _wait_all(url: str, ids: list[str], max_seconds: float) -> list[dict[str, Any]]:
    """Every task once all are final, or as they stand at the deadline (the report then counts
    the unfinished ones): a time limit must not lose the figures measured so far."""
    _wait_quiet(url, max_seconds)
    return _fetch(url, ids)


def _wait_quiet(url: str, max_seconds: float) -> None:
    """Until no task is queued or running (or the deadline), watching the queue's counts: one
    request every 0.2 s, so that a stream's wall ends within 0.2 s of its last task."""
    deadline = time.monotonic() + max_seconds
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            states = client.get(f"{url}/v1/queue").json()["state"]
            if not any(n for state, n in states.items() if state not in FINAL_STATES):
                return
            time.sleep(0.2)


def _fetch(url: str, ids: list[str]) -> list[dict[str, Any]]:
    with httpx.Client(timeout=30) as client:
        tasks = [client.get(f"{url}/v1/tasks/{i}").json() for i in ids]
    done = sum(t["state"] in FINAL_STATES for t in tasks)
    print(f"{done}/{len(tasks)} final", flush=True)
    return tasks


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))  # fmt: skip


def _stages(final: list[dict[str, Any]], started: float | None) -> dict[str, Any]:
    """Where the stream's wall time went, from the tasks' own timestamps, in seconds after the
    first upload began: the last upload accepted, the first and last task claimed, the first
    and last task finished (the service's work ended there; the wall ends when the
    queue is seen empty, within 0.2 s after)."""
    if started is None or not final:
        return {}

    def at(key: str) -> list[float]:
        return sorted(_epoch(t[key]) - started for t in final if t.get(key))

    created, began, ended = at("created_at"), at("started_at"), at("finished_at")
    return {
        "last_upload_s": created[-1] if created else None,
        "first_claim_s": began[0] if began else None,
        "last_claim_s": began[-1] if began else None,
        "first_finish_s": ended[0] if ended else None,
        "last_finish_s": ended[-1] if ended else None,
    }


def _report_stream(args: argparse.Namespace, out: Path, tasks: list[dict[str, Any]],
                   final: list[dict[str, Any]], samples: list[dict[str, Any]], wall: float,
                   metrics: str, used_before: dict[str, int]) -> None:  # fmt: skip
    states: dict[str, int] = {}
    for t in final:
        states[t["state"]] = states.get(t["state"], 0) + 1
    gpus = sorted({k.split(":", 1)[1] for s in samples for k in s if k.startswith("cap:")})
    per_gpu = {}
    for uuid in gpus:
        caps = [s[f"cap:{uuid}"] for s in samples if f"cap:{uuid}" in s]
        used = [s[f"used:{uuid}"] for s in samples if f"used:{uuid}" in s]
        adm = [s[f"admitted:{uuid}"] for s in samples if f"admitted:{uuid}" in s]
        cap = max(caps)
        per_gpu[uuid] = {
            "cap_bytes": cap,
            "max_used_bytes": max(used),
            "max_admitted_bytes": max(adm),
            "used_before_service_bytes": used_before.get(uuid),
            "samples_over_cap": sum(1 for u in used if u > cap),
            "samples": len(used),
            # the estimate's accuracy in service: what the ledger admitted at most against the
            # most the GPU held beyond what it held before the service started (target 1-1.15)
            "admitted_over_used": max(adm) / max(1, max(used) - used_before.get(uuid, 0)),
        }
    audio = sum(
        t["seconds"] for t, f in zip(tasks, final, strict=True) if f["state"] == "completed"
    )
    # a run cut by --max-seconds: what its unfinished tasks had decoded, by their progress (the
    # stitched prefix of their audio, so a lower bound where windows end out of order)
    partial = sum(
        t["seconds"] * float(f.get("progress") or 0.0)
        for t, f in zip(tasks, final, strict=True)
        if f["state"] == "running"
    )
    report = {
        "name": args.name, "devices": args.devices, "tasks": len(final), "states": states,
        "oom_total": _metric(metrics, "gpuscribe_out_of_memory_total"),
        # how many times a model was loaded, on every GPU together (issue 13: loads again and
        # again under a low cap held 4 GPUs back)
        "model_loads": _metric(metrics, "gpuscribe_model_load_seconds_count"),
        "failed_errors": sorted({t["error"] for t in final if t["state"] == "failed"}),
        "wall_seconds": wall, "audio_seconds": audio, "audio_seconds_per_second": audio / wall,
        "audio_seconds_decoded": audio + partial,
        "audio_seconds_decoded_per_second": (audio + partial) / wall,
        "sample_rate_hz": len(samples) / max(1e-9, samples[-1]["t"]) if samples else 0,
        "per_gpu": per_gpu, "cap_fraction": args.cap, "foreign_fraction": args.foreign,
        "max_tasks_per_gpu": args.max_tasks, "models": args.models, "beams": args.beams,
        "urgent_probes": getattr(args, "probes", []),
        "stages": (stages := _stages(final, getattr(args, "started_epoch", None))),
        "audio_seconds_per_second_to_last_finish": audio / stages["last_finish_s"]
        if stages.get("last_finish_s") else None,
        "batch_log": _batch_lines(out / f"serve-{args.name}.log"),
    }  # fmt: skip
    (out / f"stream-{args.name}.json").write_text(json.dumps(report, indent=1))
    try:
        _plot(out / f"stream-{args.name}.png", samples, gpus, args.name, used_before)
    except ImportError:
        print("no matplotlib here: no plot")
    print(json.dumps({k: v for k, v in report.items() if k != "per_gpu"}, indent=1))
    for uuid, g in per_gpu.items():
        print(
            f"{uuid[:12]} cap {g['cap_bytes'] / GIB:.1f} GiB"
            f" max used {g['max_used_bytes'] / GIB:.1f}"
            f" max admitted {g['max_admitted_bytes'] / GIB:.1f}"
            f" held before start {(g['used_before_service_bytes'] or 0) / GIB:.1f}"
            f" admitted / used above it {g['admitted_over_used']:.3f}"
            " over-cap samples "
            f"{g['samples_over_cap']}/{g['samples']}"
        )


def _batch_lines(log: Path) -> list[str]:
    """What the batch logged a minute while it worked (its steps, rows, the share of steps that
    waited on the host, and its milliseconds a step by part), from the service's log."""
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [line[line.index("batch: ") :] for line in lines if "batch: " in line]


def _plot(path: Path, samples: list[dict[str, Any]], gpus: list[str], name: str,
          used_before: dict[str, int]) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(gpus), 1, figsize=(10, 3 * len(gpus)), squeeze=False)
    for ax, uuid in zip(axes[:, 0], gpus, strict=True):
        pts = [s for s in samples if f"admitted:{uuid}" in s]
        used = [s for s in samples if f"used:{uuid}" in s]
        ax.plot([s["t"] for s in used], [s[f"used:{uuid}"] / GIB for s in used],
                label="device used", lw=0.8)  # fmt: skip
        ax.step([s["t"] for s in pts], [s[f"admitted:{uuid}"] / GIB for s in pts],
                label="ledger admitted", where="post", lw=0.8)  # fmt: skip
        ax.axhline(max(s[f"cap:{uuid}"] for s in pts) / GIB, color="red", ls="--", label="cap")
        before = used_before.get(uuid, 0)
        if before > GIB:  # another process holds memory: what we admitted goes on top of it
            ax.axhline(before / GIB, color="grey", ls=":", label="held before start")
            ax.step([s["t"] for s in pts], [(before + s[f"admitted:{uuid}"]) / GIB for s in pts],
                    label="held before start + admitted", where="post", lw=0.8)  # fmt: skip
        ax.set_ylabel("GiB")
        ax.set_title(f"{name}: {uuid}")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--devices", default="")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--models", default="", help="comma-separated (default: the grid's)")
    c.add_argument("--rows-file", default="", help="rows of earlier runs to keep and add to")
    c.set_defaults(fn=cmd_calibrate)
    v = sub.add_parser("validate")
    v.add_argument("--profile", required=True)
    v.add_argument("--sizes", default=",".join(map(str, VALIDATE_BATCH_SIZES)),
                   help="batch sizes a batched model is validated at, one part each")  # fmt: skip
    v.set_defaults(fn=cmd_validate)
    r = sub.add_parser("rescore")
    r.add_argument("--profile", required=True)
    r.add_argument("--validation", required=True, help="a validation.json of `validate`")
    r.set_defaults(fn=cmd_rescore)
    s = sub.add_parser("stream")
    s.add_argument("--name", default="stream")
    s.add_argument("--tasks", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cap", type=float, default=0.9)
    s.add_argument("--foreign", type=float, default=0.0, help="fraction held by a foreign process")
    s.add_argument(
        "--tokens",
        type=int,
        default=24,
        help="tokens decoded per window (0: drawn per window, mean 100, 10-224)",
    )
    s.add_argument("--models", default="", help="comma-separated; default: a mix of six")
    s.add_argument("--beams", default="1,2,5")
    s.add_argument("--min-seconds", type=float, default=10.0)
    s.add_argument("--max-tasks", type=int, default=0, help="MAX_TASKS_PER_GPU (0: default)")
    s.add_argument("--batch-rows", type=int, default=0, help="GPUSCRIBE_BATCH_ROWS (0: auto)")
    s.add_argument("--urgent", type=int, default=0, help="urgent 30 s tasks sent mid-stream")
    s.add_argument("--urgent-after", type=float, default=60.0)
    s.add_argument("--max-seconds", type=float, default=3600, help="report what finished by then")
    s.add_argument(
        "--no-warm-up", dest="warm_up", action="store_false",
        help="start the clock with the first task (the model's load counted in)",
    )  # fmt: skip
    s.set_defaults(fn=cmd_stream)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.fn(args)


if __name__ == "__main__":
    main()
