"""`gpuscribe gpus`: a gpustat-like view of the server's devices, once or redrawn."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from gpuscribe.cli.client import ApiClient, add_server_flag, client_for
from gpuscribe.cli.output import show
from gpuscribe.cli.tables import gpu_warnings, gpus_table, to_json

CLEAR = "\x1b[H\x1b[2J"


def gpus_view(server: str, gpus: list[dict[str, Any]], *, now: float) -> str:
    """The header line, the table and, under it, a line per device in a memory warning."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    view = f"{server}  {stamp}  memory in GiB\n{gpus_table(gpus)}"
    warnings = gpu_warnings(gpus)
    return "\n\n".join([view, "\n".join(warnings)]) if warnings else view


def _show(client: ApiClient, args: argparse.Namespace, *, watching: bool) -> None:
    gpus = client.gpus()
    if args.json:
        show(json.dumps({"gpus": gpus}) if watching else to_json({"gpus": gpus}), flush=True)
        return
    view = gpus_view(client.server, gpus, now=time.time())
    prefix = CLEAR if watching and sys.stdout.isatty() else ""
    show(prefix + view, flush=True)


def cmd_gpus(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        if args.watch is None:
            _show(client, args, watching=False)
            return 0
        try:
            while True:
                _show(client, args, watching=True)
                time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "gpus",
        help="show the server's GPUs: memory, utilisation, temperature, power, tasks",
        description="One line per device: memory used (as the device reports it, other "
        "processes included) / reserved by gpuscribe / gpuscribe's cap, in GiB; total memory; "
        "utilisation; temperature; power; tasks running / most allowed; the memory warning the "
        "device is in (WARN: used high or foreign growth; under the table, since when and why: "
        "no new task is placed on it until it clears); loaded models.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"gpus": [...]} as JSON (one line per refresh with --watch)',
    )
    p.add_argument(
        "--watch",
        nargs="?",
        type=_positive,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="redraw every SECONDS (default 2) until Ctrl-C",
    )
    add_server_flag(p)
    p.set_defaults(handler=cmd_gpus)
