"""Plain-text tables and values for the command line. Pure functions of their inputs."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from gpuscribe.memory.types import GIB

Row = Mapping[str, Any]


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()
) -> str:
    """Columns separated by two spaces; the columns named in `right` align right."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def gib(value: float | None, digits: int = 1) -> str:
    """Bytes as GiB (`12.3`), `-` when unknown."""
    return "-" if value is None else f"{value / GIB:.{digits}f}"


def optional(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def seconds(value: float | None) -> str:
    """`42.0s`, `3m05s`, `1h02m`."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def timestamp(value: float | str | None) -> str:
    """Seconds since the epoch or ISO 8601 as local `YYYY-MM-DD HH:MM:SS`; other text as is."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            epoch = datetime.fromisoformat(value).timestamp()
        except ValueError:
            return value
    else:
        epoch = value
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def gpu_row(gpu: Row) -> list[str]:
    memory = " / ".join(
        gib(gpu.get(k)) for k in ("memory_used_bytes", "memory_reserved_bytes", "memory_cap_bytes")
    )
    return [
        f"[{gpu.get('index', '?')}]",
        str(gpu.get("name", "?")),
        f"{memory} GiB",
        gib(gpu.get("memory_total_bytes")),
        _percent(gpu.get("utilization_percent")),
        optional(gpu.get("temperature_c"), "{:.0f}°C"),
        optional(gpu.get("power_watts"), "{:.0f} W"),
        f"{optional(gpu.get('tasks_running'))}/{optional(gpu.get('max_tasks'))}",
        warning_label(gpu.get("memory_warning")),
        ", ".join(str(m) for m in gpu.get("resident_models") or ()) or "-",
    ]


WARNING_LABELS = {"used_high": "used high", "foreign_growth": "foreign growth"}


def warning_label(warning: Row | None) -> str:
    """The WARN cell: the memory warning's condition in words, `-` when there is none."""
    if not warning:
        return "-"
    condition = str(warning.get("condition", "?"))
    return WARNING_LABELS.get(condition, condition)


def gpu_warnings(gpus: Sequence[Row]) -> list[str]:
    """One line per device in a memory warning, for under the table: where, since when, why.
    While a warning lasts the device is given no new task."""
    lines = []
    for gpu in gpus:
        warning = gpu.get("memory_warning")
        if not warning:
            continue
        node = f"node {gpu['node']} " if gpu.get("node") else ""
        lines.append(
            f"WARNING {node}GPU [{gpu.get('index', '?')}] since "
            f"{timestamp(warning.get('since'))}: {warning.get('message', '?')}; "
            "no new task is placed on it until it clears"
        )
    return lines


GPU_HEADERS = [
    "GPU",
    "NAME",
    "USED / RESERVED / CAP",
    "TOTAL",
    "UTIL",
    "TEMP",
    "POWER",
    "TASKS",
    "WARN",
    "MODELS",
]


def gpus_table(gpus: Sequence[Row]) -> str:
    """The `gpuscribe gpus` table: memory used (device) / reserved (gpuscribe) / cap in GiB.
    Devices of a cluster come with their node and its last heartbeat, in two first columns."""
    if not gpus:
        return "no devices"
    if not any(g.get("node") for g in gpus):
        return render_table(GPU_HEADERS, [gpu_row(g) for g in gpus], right=(2, 3, 4, 5, 6, 7))
    rows = [
        [str(g.get("node") or "?"), timestamp(g.get("heartbeat_at")), *gpu_row(g)] for g in gpus
    ]
    return render_table(NODE_HEADERS + GPU_HEADERS, rows, right=(4, 5, 6, 7, 8, 9))


NODE_HEADERS = ["NODE", "HEARTBEAT"]


TASK_HEADERS = [
    "ID", "STATE", "PRIORITY", "MODEL", "DEVICE", "PROGRESS", "AUDIO", "CREATED", "ERROR",
]  # fmt: skip


def device_label(task: Row) -> str:
    """Where a task runs or ran: `cpu`, `gpu 0`, or `-`."""
    if task.get("gpu_uuid") == "cpu":
        return "cpu"
    index = task.get("gpu")
    return "-" if index is None else f"gpu {index}"


def task_row(task: Row) -> list[str]:
    error = str(task.get("error") or task.get("wait_reason") or "")
    return [
        str(task.get("id", "?")),
        str(task.get("state", "?")),
        str(task.get("priority", "?")),
        str(task.get("model", "?")),
        device_label(task),
        _percent(100.0 * float(task.get("progress") or 0.0)),
        seconds(task.get("audio_seconds")),
        timestamp(task.get("created_at")),
        error if len(error) <= 60 else error[:57] + "...",
    ]


def tasks_table(tasks: Sequence[Row]) -> str:
    if not tasks:
        return "no tasks"
    return render_table(TASK_HEADERS, [task_row(t) for t in tasks], right=(4, 5, 6))


def task_details(task: Row) -> str:
    """One task as `key: value` lines, for `gpuscribe status`."""
    progress = 100.0 * float(task.get("progress") or 0.0)
    pairs = [
        ("id", str(task.get("id", "?"))),
        ("state", str(task.get("state", "?"))),
        ("progress", f"{progress:.0f}%"),
        ("priority", optional(task.get("priority"))),
        ("model", f"{task.get('model', '?')} ({task.get('engine', '?')})"),
        ("device", device_label(task)),
        ("audio", seconds(task.get("audio_seconds"))),
        ("memory estimate", f"{gib(task.get('memory_estimate_bytes'), 2)} GiB"),
        ("memory peak", f"{gib(task.get('memory_peak_bytes'), 2)} GiB"),
        ("attempts", optional(task.get("attempts"))),
        ("created", timestamp(task.get("created_at"))),
        ("started", timestamp(task.get("started_at"))),
        ("finished", timestamp(task.get("finished_at"))),
    ]
    for key in ("wait_reason", "error", "last_error"):
        if task.get(key):
            pairs.append((key.replace("_", " "), str(task[key])))
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)


def dict_rows_table(rows: Sequence[Row]) -> str:
    """Any list of flat dicts: the union of their keys as columns, in first-seen order."""
    if not rows:
        return "no rows"
    headers: list[str] = []
    for row in rows:
        headers.extend(k for k in row if k not in headers)
    cells = [[_cell(h, row.get(h)) for h in headers] for row in rows]
    return render_table([h.upper() for h in headers], cells)


def _cell(key: str, value: Any) -> str:
    """Values of `*_bytes` keys in GiB, other floats to three significant digits."""
    if value is None:
        return "-"
    if key.endswith("_bytes") and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{gib(value, 2)} GiB"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
