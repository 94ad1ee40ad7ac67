"""Client commands about tasks: transcribe, submit, status, result, cancel, tasks."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuscribe.api.formats import JSON_FORMATS, RESULT_FORMATS
from gpuscribe.cli import CommandError
from gpuscribe.cli.args import non_negative_int
from gpuscribe.cli.client import ApiClient, ApiError, NoAnswer, add_server_flag, client_for
from gpuscribe.cli.output import error, show, show_document
from gpuscribe.cli.progress import ProgressDisplay, ProgressItem
from gpuscribe.cli.tables import device_label, task_details, tasks_table, to_json
from gpuscribe.domain import FINAL_STATES, Priority, TaskState

# The server's own names: the CLI offers what the API accepts, never a copy of it.
FORMATS = RESULT_FORMATS
STATES = tuple(state.value for state in TaskState)
FINAL = frozenset(state.value for state in FINAL_STATES)
PRIORITIES = tuple(priority.label for priority in Priority)


def extension(fmt: str) -> str:
    """The file extension a result in `fmt` is written under."""
    if fmt in JSON_FORMATS:
        return "json"
    return "txt" if fmt == "text" else fmt


def add_task_options(parser: argparse.ArgumentParser) -> None:
    """The form fields of `POST /v1/tasks`; what is not given, the server decides."""
    group = parser.add_argument_group("transcription options (the server's defaults if absent)")
    group.add_argument("--model", help="model name, e.g. tiny.en, small, large-v3, turbo")
    group.add_argument("--language", help="language code of the audio, e.g. en (default: detect)")
    group.add_argument(
        "--task", choices=["transcribe", "translate"], help="transcribe, or translate into English"
    )
    group.add_argument("--priority", choices=PRIORITIES, help="queue priority (default normal)")
    group.add_argument("--beam-size", type=int, metavar="N", help="beam width of decoding")
    group.add_argument("--initial-prompt", metavar="TEXT", help="text that primes the decoder")
    group.add_argument(
        "--word-timestamps", action="store_true", default=None, help="time every word"
    )
    group.add_argument(
        "--vad-filter",
        action="store_true",
        default=None,
        help="skip silence with voice activity detection",
    )


def task_fields(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "model",
        "language",
        "task",
        "priority",
        "beam_size",
        "initial_prompt",
        "word_timestamps",
        "vad_filter",
    )
    return {name: getattr(args, name) for name in names}


@dataclass(slots=True)
class Job:
    """One input file of `transcribe` and what became of it."""

    path: Path
    output: Path
    task_id: str | None = None
    state: str = "uploading"
    progress: float = 0.0
    detail: str = ""
    error: str | None = None

    def item(self) -> ProgressItem:
        return ProgressItem(self.path.name, self.state, self.progress, self.error or self.detail)

    def summary(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "task_id": self.task_id,
            "state": self.state,
            "output": str(self.output) if self.state == "completed" else None,
            "error": self.error,
        }


def plan_jobs(files: list[str], output_dir: Path, fmt: str) -> list[Job]:
    """Check the inputs exist and that no two of them write the same output."""
    jobs: list[Job] = []
    seen: dict[Path, Path] = {}
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise CommandError(f"{name}: no such file")
        output = output_dir / f"{path.stem}.{extension(fmt)}"
        if output in seen:
            raise CommandError(f"{seen[output]} and {path} would both write {output}")
        seen[output] = path
        jobs.append(Job(path, output))
    return jobs


def _submit(client: ApiClient, job: Job, fields: dict[str, Any]) -> None:
    try:
        task = client.submit(job.path, **fields)
    except (ApiError, NoAnswer) as exc:  # this job's exchange; ServerUnreachable stops the run
        job.state, job.error = "failed", f"not accepted: {exc.message}"
        return
    job.task_id = str(task["id"])
    _apply(job, task)


def _apply(job: Job, task: dict[str, Any]) -> None:
    job.state = str(task.get("state", job.state))
    job.progress = float(task.get("progress") or 0.0)
    reason = task.get("wait_reason")
    device = device_label(task)
    job.detail = str(reason) if reason else ("" if device == "-" else device)
    if job.state in ("failed", "cancelled"):
        job.error = str(task.get("error") or job.state)


def _poll(client: ApiClient, job: Job, fmt: str, layout: dict[str, int | None]) -> None:
    if job.task_id is None or job.state in FINAL:
        return
    try:
        _apply(job, client.task(job.task_id))
        if job.state == "completed":
            job.output.write_text(client.result(job.task_id, fmt, **layout), encoding="utf-8")
    except (ApiError, NoAnswer) as exc:  # this job's exchange; ServerUnreachable stops the run
        job.state, job.error = "failed", exc.message
        return
    if job.state == "completed":
        job.progress, job.detail = 1.0, f"-> {job.output}"


def run_jobs(client: ApiClient, jobs: list[Job], args: argparse.Namespace) -> None:
    display = ProgressDisplay(sys.stderr)
    fields = task_fields(args)
    for job in jobs:
        _submit(client, job, fields)
        display.update([j.item() for j in jobs])
    while any(j.state not in FINAL for j in jobs):
        time.sleep(args.interval)
        for job in jobs:
            _poll(client, job, args.format, layout_params(args))
        display.update([j.item() for j in jobs])


def cmd_transcribe(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir)
    jobs = plan_jobs(args.files, output_dir, args.format)
    output_dir.mkdir(parents=True, exist_ok=True)
    with client_for(args) as client:
        try:
            run_jobs(client, jobs, args)
        except KeyboardInterrupt:
            ids = " ".join(j.task_id for j in jobs if j.task_id and j.state not in FINAL)
            raise CommandError(
                f"interrupted; the server keeps the tasks: {ids}", exit_code=130
            ) from None
    if args.json:
        show(to_json([j.summary() for j in jobs]))
    for job in jobs:
        if job.state == "completed" and not args.json:
            show(str(job.output))
        elif job.state != "completed":
            error(f"{job.path}: {job.state}: {job.error}")
    return 0 if all(j.state == "completed" for j in jobs) else 1


def cmd_submit(args: argparse.Namespace) -> int:
    for name in args.files:
        if not Path(name).is_file():
            raise CommandError(f"{name}: no such file")
    with client_for(args) as client:
        tasks = [client.submit(name, **task_fields(args)) for name in args.files]
    show(to_json(tasks) if args.json else "\n".join(str(t["id"]) for t in tasks))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        task = client.task(args.id)
    show(to_json(task) if args.json else task_details(task))
    return 0


def add_layout_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("subtitles (srt, vtt)")
    group.add_argument(
        "--max-line-width",
        type=non_negative_int,
        metavar="N",
        help="characters a line (server default 42; 0: no limit)",
    )
    group.add_argument(
        "--max-line-count",
        type=non_negative_int,
        metavar="N",
        help="lines a cue (server default 2; 0: no limit)",
    )


def layout_params(args: argparse.Namespace) -> dict[str, int | None]:
    return {"max_line_width": args.max_line_width, "max_line_count": args.max_line_count}


def format_name(text: str) -> str:
    """A result format in any case (`SRT`)."""
    name = text.strip().lower()
    if name not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"invalid format {text!r}: choose from {', '.join(FORMATS)}"
        )
    return name


def cmd_result(args: argparse.Namespace) -> int:
    fmt = "verbose_json" if args.json else args.format
    with client_for(args) as client:
        text = client.result(args.id, fmt, **layout_params(args))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        show_document(text)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        task = client.cancel(args.id)
    if args.json:
        show(to_json(task))
    elif task.get("state") == "running":
        show(f"{args.id}: cancel requested; the task is being stopped")
    else:
        show(f"{args.id}: {task.get('state')}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        tasks = client.tasks(args.state, args.limit)
    show(to_json(tasks) if args.json else tasks_table(tasks))
    return 0


def _json_flag(parser: argparse.ArgumentParser, text: str = "print JSON") -> None:
    parser.add_argument("--json", action="store_true", help=text)


def _transcribe_parser(sub: Any) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe files: submit, show progress, write the results",
        description="Submit each FILE to the server, show a progress bar on stderr, and write "
        "each result to OUTPUT_DIR/<name>.<ext> (txt for text, json for json and verbose_json). "
        "Exits 1 if any file failed, saying why.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio or video files")
    p.add_argument(
        "--format",
        type=format_name,
        default="text",
        metavar="FORMAT",
        help=f"result format, one of {', '.join(FORMATS)} (default text)",
    )
    p.add_argument(
        "--output-dir",
        default=".",
        metavar="DIR",
        help="where results are written (default: the current directory)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how often to ask the server for progress (default 0.5)",
    )
    _json_flag(p, "print a JSON summary of the files, tasks and outputs on stdout")
    add_layout_options(p)
    add_task_options(p)
    add_server_flag(p)
    p.set_defaults(handler=cmd_transcribe)


def _simple_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="queue files and print their task ids",
        description="Queue each FILE and print one task id a line (or the tasks "
        "as JSON). Follow them with `status`, fetch them with `result`.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio or video files")
    _json_flag(p, "print the created tasks as JSON")
    add_task_options(p)
    add_server_flag(p)
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser(
        "status",
        help="show one task",
        description="Show a task's state, "
        "progress, GPU, memory estimate and peak, timings and error.",
    )
    p.add_argument("id", metavar="ID", help="task id")
    _json_flag(p, "print the task as JSON")
    add_server_flag(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "result",
        help="print or save a completed task's transcript",
        description="Fetch a completed task's result in a format.",
    )
    p.add_argument("id", metavar="ID", help="task id")
    p.add_argument(
        "--format",
        type=format_name,
        default="text",
        metavar="FORMAT",
        help=f"result format, one of {', '.join(FORMATS)} (default text)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    _json_flag(p, "print the result as JSON (verbose_json: text, segments, words, language)")
    add_layout_options(p)
    add_server_flag(p)
    p.set_defaults(handler=cmd_result)

    p = sub.add_parser(
        "cancel",
        help="cancel a task",
        description="Cancel a task: a queued task at once, a running one is stopped.",
    )
    p.add_argument("id", metavar="ID", help="task id")
    _json_flag(p, "print the task as JSON")
    add_server_flag(p)
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser(
        "tasks",
        help="list tasks, newest first",
        description="List tasks, newest first, as a table.",
    )
    p.add_argument("--state", choices=STATES, help="only tasks in this state")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (default 20)")
    _json_flag(p, "print the tasks as JSON")
    add_server_flag(p)
    p.set_defaults(handler=cmd_tasks)


def register(sub: Any) -> None:
    _transcribe_parser(sub)
    _simple_parsers(sub)
