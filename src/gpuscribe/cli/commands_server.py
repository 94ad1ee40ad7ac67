"""`gpuscribe serve`, `worker` and `calibrate`: commands that run the node on this machine, and
the settings flags they share with `estimate` and `bench`."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Any

from gpuscribe.cli import CommandError
from gpuscribe.cli.output import note, show
from gpuscribe.cli.tables import dict_rows_table
from gpuscribe.config import Settings, env_name, load_settings, unknown_variables

# (setting, metavar or None for a switch, help). Values go to load_settings as given, so its
# messages name the flag.
SETTING_FLAGS: dict[str, tuple[str | None, str]] = {
    "host": ("HOST", "address the HTTP API listens on"),
    "port": ("PORT", "TCP port of the HTTP API"),
    "store": (
        "URL",
        "task store: sqlite:///PATH, or postgresql://... for a shared store "
        "(default: sqlite:///DATA_DIR/gpuscribe.db)",
    ),
    "data_dir": ("DIR", "where the SQLite store and uploaded audio live"),
    "simulate_gpus": (
        "SPEC",
        "run on simulated GPUs instead of real ones, e.g. 2x24GiB or 1x80GiB,1x40GiB "
        "(1x24GiB+6GiB: another process holds 6 GiB of it)",
    ),
    "node_name": ("NAME", "this node's name in a shared store"),
    "max_memory_utilization": ("FRACTION", "cap of each GPU's memory that gpuscribe may fill"),
    "max_tasks_per_gpu": ("N", "most tasks running at once on one GPU"),
    "memory_confidence_factor": ("K", "safety factor of memory estimates (mean + std x K)"),
    "calibration_sample_size": ("N", "measurements kept per model and settings for calibration"),
    "system_reserve_bytes": ("SIZE", "memory left free on each GPU, e.g. 1GiB"),
    "default_model": ("MODEL", "model used when a request names none"),
    "default_engine": ("ENGINE", "faster-whisper or transformers (default: by device)"),
    "models_dir": ("DIR", "directory of local models"),
    "cpu_threads": ("N", "CPU threads per engine (0: the engine chooses)"),
    "max_queue_length": ("N", "queued tasks beyond which submissions get 429"),
    "allow_downloads": (None, "download absent models from the Hugging Face hub"),
    "benchmark_only": (
        None,
        "build absent models with random weights (outputs are not transcripts)",
    ),
    "insecure": (None, "allow listening beyond localhost without API keys"),
}

SERVE_FLAGS = tuple(SETTING_FLAGS)
WORKER_FLAGS = tuple(
    n for n in SETTING_FLAGS if n not in ("host", "port", "insecure", "max_queue_length")
)
LOCAL_FLAGS = (
    "store",
    "data_dir",
    "simulate_gpus",
    "max_memory_utilization",
    "memory_confidence_factor",
    "calibration_sample_size",
    "models_dir",
    "default_model",
    "default_engine",
)


def add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Add `--config` and one flag per setting; each help names its variable and default."""
    group = parser.add_argument_group(
        "settings", "flags win over environment variables, which win over gpuscribe.toml"
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (env GPUSCRIBE_CONFIG; default ./gpuscribe.toml)",
    )
    defaults = Settings()
    for name in names:
        metavar, text = SETTING_FLAGS[name]
        default = getattr(defaults, name)
        shown = f"; default {default}" if default not in ("", False) else ""
        flag = "--" + name.replace("_", "-")
        full = f"{text} (env {env_name(name)}{shown})"
        if metavar is None:
            group.add_argument(flag, dest=name, action="store_true", default=None, help=full)
        else:
            group.add_argument(flag, dest=name, metavar=metavar, help=full)
    parser.set_defaults(settings_flags=tuple(names))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults < gpuscribe.toml < environment < flags. Raises ConfigError."""
    flags = {name: getattr(args, name) for name in args.settings_flags}
    settings = load_settings(flags=flags, config_file=args.config)
    for warning in unknown_variables():
        note(f"gpuscribe: warning: {warning}")
    return settings


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging threshold (default info)",
    )


def _run_node(args: argparse.Namespace, *, with_api: bool, with_workers: bool = True) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from gpuscribe.node.service import run_service

    run_service(settings, with_api=with_api, with_workers=with_workers)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _run_node(args, with_api=True, with_workers=not args.no_workers)


def cmd_worker(args: argparse.Namespace) -> int:
    return _run_node(args, with_api=False)


def _split(values: Sequence[str] | None) -> list[str]:
    return [part.strip() for v in values or () for part in v.split(",") if part.strip()]


def _ints(values: Sequence[str] | None, flag: str, default: int) -> list[int]:
    try:
        return [int(v) for v in _split(values)] or [default]
    except ValueError as exc:
        raise CommandError(f"{flag} takes whole numbers: {exc}") from exc


def cmd_calibrate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    from gpuscribe.node.calibrate import CalibrationFailed, run_calibration

    try:
        rows = run_calibration(
            settings,
            _split(args.model) or [settings.default_model],
            _ints(args.batch_size, "--batch-size", 1),
            _ints(args.beam_size, "--beam-size", 5),
            export_profile=args.export_profile,
        )
    except CalibrationFailed as exc:
        raise CommandError(f"calibration failed: {exc}") from exc
    show(json.dumps(rows, indent=2, default=str) if args.json else dict_rows_table(rows))
    return 1 if any(row.get("error") for row in rows) else 0


def register(sub: Any) -> None:
    """Add serve, worker and calibrate to the subcommands."""
    serve = sub.add_parser(
        "serve",
        help="run the API, the scheduler and workers on local GPUs",
        description="Run the HTTP API, the scheduler and one worker per local GPU (the CPU where "
        "there is none) until Ctrl-C or SIGTERM.",
    )
    serve.add_argument(
        "--no-workers",
        action="store_true",
        help="serve the API only, with no worker on this machine (behind a load balancer, "
        "in front of `gpuscribe worker` nodes sharing a PostgreSQL store)",
    )
    add_settings_flags(serve, SERVE_FLAGS)
    _add_log_level(serve)
    serve.set_defaults(handler=cmd_serve)

    worker = sub.add_parser(
        "worker",
        help="run the scheduler and workers joining a shared store, without the API",
        description="Join a shared store (--store postgresql://...) as a node without an HTTP "
        "API: schedule queued tasks on this machine's GPUs.",
    )
    add_settings_flags(worker, WORKER_FLAGS)
    _add_log_level(worker)
    worker.set_defaults(handler=cmd_worker)

    calibrate = sub.add_parser(
        "calibrate",
        help="measure real memory peaks on local GPUs and store them",
        description="Run each model with each batch and beam size on the local GPUs, measure the "
        "peak memory and store the samples that calibrate future estimates. A model that runs as "
        "one continuous batch (the transformers engine on a GPU) is instead loaded at a quarter, "
        "half and all of the rows that GPU gives it, every row in use at each beam size: its "
        "batch's workspace is fitted over the sizes (--batch-size does not apply to it).",
    )
    calibrate.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help="model to measure; repeat or comma-separate (default: the default model)",
    )
    calibrate.add_argument(
        "--batch-size", action="append", metavar="N", help="batch sizes, e.g. 1,4,8 (default 1)"
    )
    calibrate.add_argument(
        "--beam-size", action="append", metavar="N", help="beam sizes, e.g. 1,5 (default 5)"
    )
    calibrate.add_argument(
        "--export-profile",
        metavar="FILE",
        help="also write the measurements as a profile to ship for this GPU model "
        "(src/gpuscribe/memory/profiles/)",
    )
    calibrate.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_settings_flags(calibrate, WORKER_FLAGS)
    calibrate.set_defaults(handler=cmd_calibrate)
