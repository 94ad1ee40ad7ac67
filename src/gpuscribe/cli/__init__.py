"""The `gpuscribe` command line: `gpuscribe.cli.main:main`.

One module per command group; `client.py` talks to the HTTP API, `tables.py` and `progress.py`
draw what the commands print.
"""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing failure of a command: printed as `gpuscribe: <message>`, exit code 1."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
