"""`gpuscribe`: the command line. `main(argv)` returns the exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gpuscribe import __version__
from gpuscribe.cli import (
    CommandError,
    commands_bench,
    commands_estimate,
    commands_gpus,
    commands_models,
    commands_server,
    commands_tasks,
)
from gpuscribe.cli.client import ClientError
from gpuscribe.cli.output import error
from gpuscribe.config import ConfigError

DESCRIPTION = """\
gpuscribe: self-hosted Whisper speech-to-text on one or many GPUs, never out of memory.

Run the service with `gpuscribe serve`; send it audio with `gpuscribe transcribe FILE...`.
Client commands talk to --server (env GPUSCRIBE_SERVER, default http://127.0.0.1:8000) and
send GPUSCRIBE_API_KEY as a bearer token."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuscribe",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"gpuscribe {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands_server.register(sub)
    commands_tasks.register(sub)
    commands_gpus.register(sub)
    commands_estimate.register(sub)
    commands_models.register(sub)
    commands_bench.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        error(str(exc))
        return 2
    except ClientError as exc:
        error(exc.message)
        return 1
    except CommandError as exc:
        error(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 1
