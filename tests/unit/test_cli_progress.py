"""The progress display of `gpuscribe transcribe`."""

from __future__ import annotations

import io

from gpuscribe.cli.progress import (
    ProgressDisplay,
    ProgressItem,
    plain_key,
    render_bar,
    render_line,
    render_plain,
)


def test_render_bar_fills_in_proportion() -> None:
    assert render_bar(0.0, 12) == "[" + "." * 10 + "]"
    assert render_bar(0.5, 12) == "[" + "#" * 5 + "." * 5 + "]"
    assert render_bar(1.0, 12) == "[" + "#" * 10 + "]"
    assert render_bar(7.0, 12) == render_bar(1.0, 12)
    assert render_bar(-1.0, 12) == render_bar(0.0, 12)


def test_render_line_fits_the_terminal() -> None:
    item = ProgressItem("meeting.wav", "running", 0.25, "gpu 0")
    line = render_line(item, columns=80, label_width=12)
    assert line.startswith("meeting.wav  [")
    assert " 25% running gpu 0" in line
    assert len(render_line(item, columns=30, label_width=12)) <= 30


def test_render_line_cuts_long_labels() -> None:
    item = ProgressItem("a-very-long-file-name-indeed.wav", "queued", 0.0)
    assert render_line(item, columns=80, label_width=10).startswith("a-very-...")


def test_plain_output_prints_changes_only() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream, is_tty=False)
    display.update([ProgressItem("a.wav", "queued", 0.0)])
    display.update([ProgressItem("a.wav", "queued", 0.0)])
    display.update([ProgressItem("a.wav", "running", 0.1)])
    display.update([ProgressItem("a.wav", "running", 0.2)])
    display.update([ProgressItem("a.wav", "running", 0.6, "gpu 1")])
    assert stream.getvalue().splitlines() == [
        "a.wav: queued 0%",
        "a.wav: running 10%",
        "a.wav: running 60% (gpu 1)",
    ]
    assert "\x1b" not in stream.getvalue()


def test_plain_key_steps() -> None:
    assert plain_key(ProgressItem("a", "running", 0.24)) == ("running", 0)
    assert plain_key(ProgressItem("a", "running", 0.25)) == ("running", 1)
    assert render_plain(ProgressItem("a", "failed", 0.0, "boom")) == "a: failed 0% (boom)"


def test_terminal_output_redraws_in_place() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream, is_tty=True, columns=80)
    items = [ProgressItem("a.wav", "running", 0.5), ProgressItem("b.wav", "queued", 0.0)]
    display.update(items)
    first = stream.getvalue()
    assert first.count("\n") == 2
    assert "\x1b[2F" not in first
    display.update(items)
    assert stream.getvalue()[len(first) :].startswith("\x1b[2F")
