"""Nothing acknowledged is lost: 500 concurrent submissions while the service is SIGKILLed part-way.

Every submission carries its own Idempotency-Key. After a restart on the same data dir, every
submission that got a 2xx is there and completes; resubmitting the ones that got no answer (same
key) gives either the task that was committed before the crash or a new one, never two tasks for
one key; resubmitting an answered one gives back the same task.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gpuscribe.api.staging import WRITE_BATCH_BYTES
from support.audio import AudioSet
from support.server import ServiceProcess, wait_all_done

pytestmark = pytest.mark.slow

THREADS = 50
PER_THREAD = 10
KILL_AFTER_ANSWERS = 150


@dataclass
class Outcome:
    key: str
    status: int | None = None  # None: no answer (connection refused or cut)
    task_id: str | None = None
    error: str | None = None


def _post(client: httpx.Client, url: str, body: bytes, key: str) -> httpx.Response:
    return client.post(
        f"{url}/v1/tasks",
        files={"file": ("clip.wav", body, "audio/wav")},
        data={"priority": "normal"},
        headers={"Idempotency-Key": key},
    )


def test_sigkill_during_concurrent_submissions(audio: AudioSet, tmp_path: Path) -> None:
    body = audio.tone(2.0, "wav").read_bytes()
    service = ServiceProcess(tmp_path / "data", simulate_gpus="1x24GiB")
    service.start()
    outcomes = [Outcome(key=f"crash-{uuid.uuid4()}") for _ in range(THREADS * PER_THREAD)]
    answered = 0
    lock = threading.Lock()
    enough = threading.Event()

    def client_thread(chunk: list[Outcome]) -> None:
        nonlocal answered
        with httpx.Client(timeout=30.0) as client:
            for outcome in chunk:
                try:
                    response = _post(client, service.url, body, outcome.key)
                except httpx.HTTPError as exc:
                    outcome.error = repr(exc)
                    continue
                outcome.status = response.status_code
                if response.status_code == 202:
                    outcome.task_id = response.json()["id"]
                else:
                    outcome.error = response.text[:300]
                with lock:
                    answered += 1
                    if answered >= KILL_AFTER_ANSWERS:
                        enough.set()

    try:
        chunks = [outcomes[i::THREADS] for i in range(THREADS)]
        with ThreadPoolExecutor(THREADS) as pool:
            futures = [pool.submit(client_thread, chunk) for chunk in chunks]
            assert enough.wait(120), f"only {answered} answers within 120 s"
            service.kill()
            killed_at = time.monotonic()
            for future in futures:
                future.result(timeout=120)

        accepted = {o.key: o.task_id for o in outcomes if o.status == 202}
        unanswered = [o for o in outcomes if o.status is None]
        others = [o for o in outcomes if o.status not in (None, 202)]
        assert not others, f"answers other than 202: {[(o.status, o.error) for o in others[:5]]}"
        assert len(accepted) >= KILL_AFTER_ANSWERS, len(accepted)
        assert unanswered, "the kill came after every submission was answered"
        assert time.monotonic() - killed_at < 120

        service.start()
        url = service.url
        with httpx.Client(timeout=60.0) as client:
            # Every acknowledged submission survived the crash.
            for key, task_id in accepted.items():
                response = client.get(f"{url}/v1/tasks/{task_id}")
                assert response.status_code == 200, (
                    f"task {task_id} (key {key}) was acknowledged with 202 but is gone after "
                    f"the crash: {response.status_code} {response.text[:200]}"
                )
            # Resubmitting the unanswered ones: each gets one task.
            replayed = 0
            for outcome in unanswered:
                response = _post(client, url, body, outcome.key)
                assert response.status_code == 202, (response.status_code, response.text[:300])
                outcome.task_id = response.json()["id"]
                outcome.status = 202
                replayed += response.headers.get("Idempotent-Replayed") == "true"
                again = _post(client, url, body, outcome.key)
                assert again.status_code == 202 and again.json()["id"] == outcome.task_id, (
                    f"key {outcome.key}: a second resubmission gave {again.status_code} "
                    f"{again.text[:200]}, not task {outcome.task_id}"
                )
            # Resubmitting answered ones returns the task already stored.
            for key, task_id in list(accepted.items())[:50]:
                response = _post(client, url, body, key)
                assert response.status_code == 202, response.text[:300]
                assert response.json()["id"] == task_id, (
                    f"key {key}: resubmission made task {response.json()['id']}, not {task_id}"
                )
                assert response.headers.get("Idempotent-Replayed") == "true", response.headers

            ids = [o.task_id for o in outcomes]
            assert all(ids) and len(set(ids)) == len(outcomes), "a key maps to no or a shared task"
            done = wait_all_done(url, ids, timeout=180)
            bad = {t: d["state"] for t, d in done.items() if d["state"] != "completed"}
            assert not bad, f"tasks not completed: {list(bad.items())[:10]}"

            # One task per key, none twice: the store holds exactly these tasks.
            listed = client.get(f"{url}/v1/tasks", params={"limit": 1000}).json()["tasks"]
            listed_ids = [t["id"] for t in listed]
            assert len(listed_ids) == len(set(listed_ids))
            extra = set(listed_ids) - set(ids)
            assert not extra, f"{len(extra)} tasks exist that no key maps to (duplicates)"
            assert len(listed_ids) == len(outcomes), (len(listed_ids), len(outcomes))
            queue = client.get(f"{url}/v1/queue").json()
            assert queue["state"]["completed"] == len(outcomes), queue
        # What the crash left on disk: uploads cut off mid-stream (temp files) and audio
        # stored for submissions whose task never committed. Completed tasks' audio is gone.
        leftovers = sorted(p.name for p in (service.data_dir / "audio").iterdir())
        print(
            f"\n{len(accepted)} acknowledged before the kill, {len(unanswered)} unanswered, "
            f"{replayed} of those had been committed before the crash (replayed); "
            f"files left in data/audio: {len(leftovers)} {leftovers[:5]}"
        )
    finally:
        service.stop()


def test_uploads_cut_off_by_a_crash_leave_no_temp_files_after_restart(
    audio: AudioSet, tmp_path: Path
) -> None:
    """Uploads streaming when the service dies never become tasks; their temp files must not
    pile up in data/audio across crashes: a restart sweeps them. (A temp file is created with
    the first batch written, so these uploads send more than a batch before they stall; a
    smaller upload cut off leaves nothing on disk at all.)"""
    wav = audio.tone(60.0, "wav").read_bytes()
    first = WRITE_BATCH_BYTES + 4096
    assert len(wav) > first
    service = ServiceProcess(tmp_path / "data", simulate_gpus="1x24GiB")
    service.start()
    audio_dir = service.data_dir / "audio"
    release = threading.Event()

    def slow_upload(index: int) -> None:
        head = (
            f'--b\r\nContent-Disposition: form-data; name="file"; filename="{index}.wav"'
            "\r\nContent-Type: audio/wav\r\n\r\n"
        ).encode()

        def body() -> Iterator[bytes]:
            yield head + wav[:first]
            release.wait(60)  # never finishes before the kill
            yield wav[first:] + b"\r\n--b--\r\n"

        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{service.url}/v1/tasks",
                content=body(),
                timeout=60,
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )

    try:
        threads = [threading.Thread(target=slow_upload, args=(i,)) for i in range(5)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len([p for p in audio_dir.iterdir() if p.name.startswith(".")]) < 5:
            assert time.monotonic() < deadline, sorted(p.name for p in audio_dir.iterdir())
            time.sleep(0.05)
        service.kill()
        release.set()
        for thread in threads:
            thread.join(timeout=60)
        stale = sorted(p.name for p in audio_dir.iterdir())
        assert len(stale) == 5, stale

        service.start()
        listed = httpx.get(f"{service.url}/v1/tasks", timeout=30).json()["tasks"]
        assert listed == [], f"cut-off uploads became tasks: {listed}"
        deadline = time.monotonic() + 10
        while (left := sorted(p.name for p in audio_dir.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, (
            f"after the restart, {len(left)} files of uploads cut off by the crash remain in "
            f"{audio_dir}: {left}"
        )
    finally:
        service.stop()
