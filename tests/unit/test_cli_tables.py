"""The command line's tables and values."""

from __future__ import annotations

import re

import pytest

from gpuscribe.cli import tables
from gpuscribe.cli.client import normalize_server
from gpuscribe.cli.tables import (
    GIB,
    dict_rows_table,
    gib,
    gpu_warnings,
    gpus_table,
    render_table,
    seconds,
    task_details,
    tasks_table,
    timestamp,
)

GPU = {
    "index": 0,
    "uuid": "GPU-1",
    "name": "NVIDIA H100 80GB HBM3",
    "memory_total_bytes": 80 * GIB,
    "memory_used_bytes": 12 * GIB,
    "memory_reserved_bytes": 10 * GIB,
    "memory_cap_bytes": 72 * GIB,
    "tasks_running": 2,
    "max_tasks": 5,
    "utilization_percent": 37.0,
    "temperature_c": 45.0,
    "power_watts": 210.4,
    "resident_models": ["large-v3"],
}

TASK = {
    "id": "t-1",
    "state": "failed",
    "priority": "high",
    "model": "tiny.en",
    "engine": "faster-whisper",
    "gpu": 1,
    "progress": 0.5,
    "audio_seconds": 125.0,
    "memory_estimate_bytes": 2 * GIB,
    "memory_peak_bytes": None,
    "attempts": 3,
    "error": "CUDA out of memory",
    "created_at": 0.0,
    "started_at": None,
    "finished_at": None,
}


def test_render_table_aligns_columns() -> None:
    text = render_table(["A", "NUM"], [["x", "1"], ["long", "123"]], right=(1,))
    assert text.splitlines() == ["A     NUM", "x       1", "long  123"]


def test_gib_and_seconds() -> None:
    assert gib(3 * GIB // 2) == "1.5"
    assert gib(None) == "-"
    assert seconds(42.04) == "42.0s"
    assert seconds(185) == "3m05s"
    assert seconds(3720) == "1h02m"


def test_gpus_table_shows_used_reserved_cap_and_tasks() -> None:
    lines = gpus_table([GPU]).splitlines()
    assert lines[0].split()[:2] == ["GPU", "NAME"]
    row = lines[1]
    for part in (
        "[0]",
        "NVIDIA H100 80GB HBM3",
        "12.0 / 10.0 / 72.0 GiB",
        "80.0",
        "37%",
        "45°C",
        "210 W",
        "2/5",
        "large-v3",
    ):
        assert part in row


def test_gpus_table_of_a_cluster_names_each_node_and_its_heartbeat() -> None:
    beat = "2026-01-02T03:04:05.000Z"
    gpus = [{**GPU, "node": "node-b", "heartbeat_at": beat}, {**GPU, "node": "node-c"}]
    lines = gpus_table(gpus).splitlines()
    assert lines[0].split()[:4] == ["NODE", "HEARTBEAT", "GPU", "NAME"]
    assert lines[1].startswith("node-b") and timestamp(beat) in lines[1]
    assert "12.0 / 10.0 / 72.0 GiB" in lines[1]
    assert lines[2].startswith("node-c") and " - " in lines[2]


def test_gpus_table_without_figures() -> None:
    row = gpus_table([{"index": 0, "name": "CPU (x)"}]).splitlines()[1]
    assert "- / - / - GiB" in row
    assert "-/-" in row


WARNING = {
    "condition": "foreign_growth",
    "since": "2026-01-02T03:04:05.000Z",
    "message": "other processes' memory grew by 3.00 GiB (to 5.00 GiB) while 2 task(s) ran",
}


def test_gpus_table_shows_a_memory_warning_in_its_warn_column() -> None:
    lines = gpus_table([GPU, {**GPU, "index": 1, "memory_warning": WARNING}]).splitlines()
    assert "WARN" in lines[0].split()
    warn = lines[0].index("WARN")
    assert lines[1][warn:].startswith("- ")  # no warning
    assert lines[2][warn:].startswith("foreign growth ")
    used_high = {**WARNING, "condition": "used_high"}
    assert "used high" in gpus_table([{**GPU, "memory_warning": used_high}])


def test_gpu_warnings_say_where_since_when_and_why() -> None:
    gpus = [GPU, {**GPU, "index": 1, "node": "node-b", "memory_warning": WARNING}]
    assert gpu_warnings(gpus) == [
        f"WARNING node node-b GPU [1] since {timestamp(WARNING['since'])}: "
        f"{WARNING['message']}; no new task is placed on it until it clears"
    ]
    assert gpu_warnings([GPU, {**GPU, "memory_warning": None}]) == []


def test_gpus_table_empty() -> None:
    assert gpus_table([]) == "no devices"


def test_tasks_table_row() -> None:
    lines = tasks_table([TASK]).splitlines()
    assert lines[0].startswith("ID")
    for part in ("t-1", "failed", "high", "tiny.en", "50%", "2m05s", "CUDA out of memory"):
        assert part in lines[1]
    assert tasks_table([]) == "no tasks"


def test_task_details_lists_memory_and_error() -> None:
    text = task_details(TASK)
    assert "memory estimate  2.00 GiB" in text
    assert "memory peak      - GiB" in text
    assert "error            CUDA out of memory" in text
    assert "tiny.en (faster-whisper)" in text


def test_dict_rows_table_formats_bytes() -> None:
    text = dict_rows_table([{"model": "tiny", "peak_bytes": GIB}, {"model": "base", "x": 0.12345}])
    header, first, second = text.splitlines()
    assert header.split() == ["MODEL", "PEAK_BYTES", "X"]
    assert "1.00 GiB" in first
    assert "0.123" in second


def test_timestamp_reads_epoch_and_iso() -> None:
    from gpuscribe.cli.tables import timestamp

    iso = "2026-01-02T03:04:05Z"
    assert timestamp(iso) == timestamp(1767323045.0)
    assert timestamp("soon") == "soon"
    assert timestamp(None) == "-"


@pytest.mark.parametrize(
    ("task", "label"),
    [
        ({"gpu": 0, "gpu_uuid": "cpu"}, "cpu"),
        ({"gpu": 1, "gpu_uuid": "GPU-1"}, "gpu 1"),
        ({"gpu": None, "gpu_uuid": None}, "-"),
    ],
)
def test_device_label_says_cpu_on_the_cpu(task: dict[str, object], label: str) -> None:
    assert tables.device_label(task) == label


def test_task_details_separate_the_current_error_from_an_earlier_attempts() -> None:
    text = tables.task_details(
        {"id": "t", "state": "running", "gpu": 0, "gpu_uuid": "cpu", "error": None,
         "last_error": "worker stopped"}
    )  # fmt: skip
    assert "device" in text and "cpu" in text
    assert re.search(r"^last error +worker stopped$", text, re.MULTILINE)
    assert "\nerror" not in text


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("localhost:8000", "http://localhost:8000"),
        ("http://h:8000/", "http://h:8000"),
        ("http://h:8000/v1", "http://h:8000"),
        ("https://h/v1/", "https://h"),
    ],
)
def test_server_urls(given: str, base: str) -> None:
    assert normalize_server(given) == base
