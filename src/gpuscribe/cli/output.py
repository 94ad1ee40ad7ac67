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


def show_document(text: str) -> None:
    """A document (a transcript) on stdout exactly as it is; on a terminal, ended by a newline
    so that the prompt starts on a line of its own."""
    ends_line = text.endswith("\n") or not sys.stdout.isatty()
    sys.stdout.write(text if ends_line else text + "\n")


def note(text: str) -> None:
    """Progress or a problem, on stderr, at once (it must not wait behind buffered results)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def error(message: str) -> None:
    note(f"gpuscribe: {message}")
