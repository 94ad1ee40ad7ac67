"""Opening a media file with PyAV across its versions."""

from __future__ import annotations

from typing import Any

import av


def open_container(path: str) -> Any:
    """Open for reading, ignoring undecodable metadata where PyAV offers that (before 19)."""
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except TypeError:  # PyAV 19 dropped the option and decodes metadata leniently itself
        return av.open(path, mode="r")
