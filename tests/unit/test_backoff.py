import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuscribe.scheduling.backoff import retry_delay


def test_grows_exponentially_within_equal_jitter() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)]:
        delays = [
            retry_delay(attempt, base_seconds=2, max_seconds=300, rng=rng) for _ in range(200)
        ]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # really jittered


def test_capped() -> None:
    rng = random.Random(2)
    for attempt in (10, 100, 10_000):
        d = retry_delay(attempt, base_seconds=2, max_seconds=300, rng=rng)
        assert 150 <= d <= 300


def test_reproducible_with_a_seeded_rng() -> None:
    a = [retry_delay(3, base_seconds=1, max_seconds=60, rng=random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]


def test_attempt_starts_at_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(0, base_seconds=1, max_seconds=10, rng=random.Random())


@given(st.integers(1, 5000), st.floats(0, 100), st.floats(0, 1000), st.integers(0, 2**32))
def test_always_between_half_the_ceiling_and_the_ceiling(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    d = retry_delay(attempt, base_seconds=base, max_seconds=cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    assert ceiling / 2 <= d <= ceiling
