"""Outside services some tests need (PostgreSQL, a browser): skip without them, fail in CI.

On a developer's machine a test whose service is absent is skipped, with the reason. With
`GPUSCRIBE_TEST_REQUIRE_SERVICES=1` (`.ci/run` sets it) the same absence fails the test, so
CI never passes by skipping them. `support.postgres` applies this to PostgreSQL.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_VARIABLE = "GPUSCRIBE_TEST_REQUIRE_SERVICES"


def services_required() -> bool:
    """Whether a missing service fails the test instead of skipping it."""
    return os.environ.get(REQUIRE_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def require_service(available: bool, reason: str) -> None:
    """Return if the service is `available`; else skip with `reason` (fail where required)."""
    if available:
        return
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1: a missing service is a failure)")
    pytest.skip(reason)
