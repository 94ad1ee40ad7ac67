"""`gpuscribe bench`: service throughput against a direct loop, and placements per second."""

from __future__ import annotations

import argparse
from typing import Any

from gpuscribe.cli import CommandError
from gpuscribe.cli.args import positive_int
from gpuscribe.cli.output import note, show
from gpuscribe.cli.tables import to_json


def _say(message: str) -> None:
    note(f"bench: {message}")


def cmd_bench(args: argparse.Namespace) -> int:
    from gpuscribe.bench.throughput import BenchError, report_text, run_benchmark

    try:
        report = run_benchmark(clips=args.clips, skip_service=args.skip_service, say=_say)
    except BenchError as exc:
        raise CommandError(f"bench failed: {exc}") from exc
    show(to_json(report.to_dict()) if args.json else report_text(report))
    return 1 if args.check and not report.meets_targets else 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure service throughput against a direct loop, and scheduler placements/s",
        description="(a) Transcribe N shipped speech clips with a direct faster-whisper loop "
        "(tiny.en, CPU, beam 5), then through a fresh `gpuscribe serve` over HTTP, all submitted "
        "at once; print both rates in audio seconds per second and their ratio (target >= 0.95). "
        "(b) Place 10,000 queued tasks over 64 simulated GPUs and print placements per second "
        "(target >= 20,000/s). Progress goes to stderr.",
    )
    p.add_argument(
        "--clips",
        type=positive_int,
        default=10,
        metavar="N",
        help="clips for the throughput comparison (default 10)",
    )
    p.add_argument(
        "--skip-service",
        action="store_true",
        help="skip the throughput comparison, measure placement only",
    )
    p.add_argument(
        "--check", action="store_true", help="exit 1 when a measured figure misses its target"
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=cmd_bench)
