"""Bad submissions are refused with a 4xx JSON error that says what is wrong; the service keeps
serving, a good submission after them completes, and tasks queued before them are untouched."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.audio import AudioSet
from support.server import (
    ServiceProcess,
    error_message,
    get_task,
    post_task,
    submit,
    wait_all_done,
    wait_done,
)
from support.wer import word_error_rate

pytestmark = pytest.mark.slow


def _refused(response: httpx.Response, *words: str) -> str:
    """A 4xx JSON error whose message contains one of `words` (case-insensitive)."""
    assert 400 <= response.status_code < 500, (
        f"expected a 4xx, got {response.status_code}: {response.text[:300]}"
    )
    assert response.status_code not in (404, 405), f"route problem: {response.text[:300]}"
    message = error_message(response)
    body: dict[str, Any] = response.json()
    assert body["error"].get("type"), body
    assert body["error"].get("code"), body
    if words:
        lowered = message.lower()
        assert any(w in lowered for w in words), f"message {message!r} names none of {words}"
    return message


def test_bad_submissions_are_refused_and_the_service_carries_on(
    cpu_service: ServiceProcess, audio: AudioSet, tmp_path: Path
) -> None:
    url = cpu_service.url
    good = audio.speech(7, "wav")
    # Tasks queued before the bad ones.
    before = [
        submit(url, audio.speech(i, "flac").path, priority="low", beam_size=1)["id"]
        for i in (1, 2, 3)
    ]

    not_audio = ("audio", "decode", "format", "invalid", "unsupported", "not")
    _refused(post_task(url, audio.random_bytes()), *not_audio)
    _refused(post_task(url, audio.text_as_wav()), *not_audio)
    _refused(post_task(url, audio.empty()), "empty", "no audio", "zero", "0 bytes")
    _refused(post_task(url, audio.truncated("mp3")), *not_audio, "truncated", "no audio")
    _refused(post_task(url, audio.truncated("flac")), *not_audio, "truncated", "no audio")
    model = "whisper-gigantic-v9"
    message = _refused(post_task(url, good.path, model=model), "model")
    assert model in message, message
    _refused(post_task(url, good.path, priority="asap"), "priority")
    _refused(post_task(url, good.path, priority="'; DROP TABLE tasks; --"), "priority")
    _refused(post_task(url, good.path, task="dance"), "task")
    _refused(post_task(url, good.path, beam_size="zero"), "beam")
    _refused(post_task(url, None, model="tiny.en"), "file")

    # Names with paths: refused, or accepted under a name the service chose; never written there.
    outside = tmp_path / f"evil-{uuid.uuid4().hex}.wav"
    hostile_names = [
        "../../etc/passwd.wav",
        "../" * 12 + "tmp/" + outside.name,
        str(outside),
        "clip\x00.wav",
        "..\\..\\windows\\system32\\clip.wav",
    ]
    quiet = audio.short_speech().path.read_bytes()  # real audio, quick to transcribe
    accepted: list[str] = []
    for name in hostile_names:
        response = post_task(url, None, filename=name, content=quiet, beam_size=1)
        if response.status_code == 202:
            accepted.append(response.json()["id"])
        else:
            _refused(response, "name", "file", "path")
    # A plain unicode name is a name like any other.
    unicode_name = "réunion 会议 ✓.wav"
    unicode_task = post_task(url, None, filename=unicode_name, content=quiet)
    assert unicode_task.status_code == 202, unicode_task.text
    accepted.append(unicode_task.json()["id"])

    # Nothing landed outside the data directory.
    assert not outside.exists()
    assert not Path("/tmp", outside.name).exists()
    assert not Path("/etc/passwd.wav").exists()
    for root, _dirs, files in os.walk(cpu_service.data_dir.parent):
        for name in files:
            assert "passwd" not in name or Path(root).is_relative_to(cpu_service.data_dir), (
                f"{root}/{name} written outside the data directory"
            )

    # Still serving: health, a good task, and the tasks from before.
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    last = submit(url, good.path)
    done = wait_all_done(url, [*before, *accepted, last["id"]], timeout=240)
    for task_id in [*before, *accepted, last["id"]]:
        assert done[task_id]["state"] == "completed", done[task_id]
    for task_id, index in zip(before, (1, 2, 3), strict=True):
        assert done[task_id]["priority"] == "low"
        assert done[task_id]["attempts"] == 1, done[task_id]
        text = httpx.get(f"{url}/v1/tasks/{task_id}/result", params={"format": "text"}).text
        assert word_error_rate(audio.speech(index).text, text) < 0.6, text
    text = httpx.get(f"{url}/v1/tasks/{last['id']}/result", params={"format": "text"}).text
    assert word_error_rate(good.text, text) < 0.6, text


def test_unknown_task_and_bad_result_format(cpu_service: ServiceProcess, audio: AudioSet) -> None:
    url = cpu_service.url
    missing = httpx.get(f"{url}/v1/tasks/{uuid.uuid4().hex}", timeout=10)
    assert missing.status_code == 404
    assert "task" in error_message(missing).lower()
    task = submit(url, audio.speech(0).path)
    wait_done(url, task["id"], timeout=120)
    bad = httpx.get(f"{url}/v1/tasks/{task['id']}/result", params={"format": "docx"}, timeout=10)
    _refused(bad, "format")
    assert get_task(url, task["id"])["state"] == "completed"
