"""Engines: faster-whisper (CTranslate2) and transformers (PyTorch). Heavy libraries are imported
inside the engines, in worker processes only; `registry.create_engine` picks one by name."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")


def rss_bytes() -> int:
    """This process's resident memory (VmRSS), or 0 where /proc is not available."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError) as exc:
        log.debug("cannot read VmRSS: %s", exc)
    return 0
