"""Retry timing: exponential backoff with equal jitter, so that tasks failing together do not
retry together."""

from __future__ import annotations

import random

_MAX_DOUBLINGS = 64  # past this, every delay is the cap anyway; avoids float overflow


def retry_delay(
    attempt: int, *, base_seconds: float, max_seconds: float, rng: random.Random
) -> float:
    """Delay before retry number `attempt` (1 for the first retry): half of
    `min(max, base x 2^(attempt-1))` fixed, the other half uniformly random."""
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, not {attempt}")
    ceiling = min(max_seconds, base_seconds * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    half = ceiling / 2.0
    return half + rng.uniform(0.0, half)
