"""Progress display for `gpuscribe transcribe`: bars redrawn in place on a terminal, plain lines
(one per change of state or 25 % step) when the output is a file or a pipe."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

PLAIN_STEP = 0.25  # plain output prints progress in steps of this fraction


@dataclass(frozen=True, slots=True)
class ProgressItem:
    label: str  # the file name
    state: str  # queued, running, completed, failed, cancelled, or "uploading"
    progress: float  # 0..1
    detail: str = ""  # GPU, wait reason or error


def render_bar(fraction: float, width: int) -> str:
    """`[#####.....]` of `width` characters in all (brackets included)."""
    inner = max(1, width - 2)
    filled = round(min(1.0, max(0.0, fraction)) * inner)
    return "[" + "#" * filled + "." * (inner - filled) + "]"


def render_line(item: ProgressItem, *, columns: int, label_width: int) -> str:
    """One terminal line: label, bar, percent, state and detail, cut to `columns`."""
    label = _fit(item.label, label_width).ljust(label_width)
    bar_width = max(10, min(40, columns - label_width - 30))
    percent = f"{100 * min(1.0, max(0.0, item.progress)):3.0f}%"
    tail = f"{item.state} {item.detail}".rstrip()
    return _fit(f"{label} {render_bar(item.progress, bar_width)} {percent} {tail}", columns)


def plain_key(item: ProgressItem) -> tuple[str, int]:
    """What must change for plain output to print a new line about an item."""
    return item.state, int(min(1.0, max(0.0, item.progress)) / PLAIN_STEP)


def render_plain(item: ProgressItem) -> str:
    detail = f" ({item.detail})" if item.detail else ""
    return f"{item.label}: {item.state} {100 * item.progress:.0f}%{detail}"


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(0, width - 3)] + "..."


class ProgressDisplay:
    """Draws a list of items on `stream` each time `update` is called."""

    def __init__(self, stream: TextIO, *, is_tty: bool | None = None, columns: int | None = None):
        self._stream = stream
        self._tty = stream.isatty() if is_tty is None else is_tty
        self._columns = columns or shutil.get_terminal_size((100, 24)).columns
        self._drawn = 0
        self._printed: dict[str, tuple[str, int]] = {}

    def update(self, items: Sequence[ProgressItem]) -> None:
        if self._tty:
            self._redraw(items)
        else:
            self._print_changes(items)
        self._stream.flush()

    def _redraw(self, items: Sequence[ProgressItem]) -> None:
        if self._drawn:
            self._stream.write(f"\x1b[{self._drawn}F")  # to the start of the first line drawn
        label_width = min(30, max((len(i.label) for i in items), default=0))
        for item in items:
            line = render_line(item, columns=self._columns - 1, label_width=label_width)
            self._stream.write("\x1b[2K" + line + "\n")
        self._drawn = len(items)

    def _print_changes(self, items: Sequence[ProgressItem]) -> None:
        for item in items:
            key = plain_key(item)
            if self._printed.get(item.label) != key:
                self._printed[item.label] = key
                self._stream.write(render_plain(item) + "\n")
