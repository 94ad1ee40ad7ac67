"""What the command line writes for its user. Results go to stdout, problems and progress to
stderr, and only through these functions: the rest of the package logs and never writes to the
terminal itself."""

from __future__ import annotations

import sys


def show(text: str, *, flush: bool = False) -> None:
    """A command's result, on stdout (a line; what pipes and scripts read)."""
    sys.stdout.write(text + "\n")
    if flush:
        sys.stdout.flush()


def note(text: str) -> None:
    """Progress or a problem, on stderr, at once (it must not wait behind buffered results)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def error(message: str) -> None:
    note(f"gpuscribe: {message}")
