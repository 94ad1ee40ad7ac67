"""The cluster claim benchmark: three node processes empty one PostgreSQL queue, every task
claimed exactly once. It asserts what was placed, not a speed (`python -m
gpuscribe.bench.claims` prints the speed)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from test_store_contract import pg_ok  # noqa: F401  (fixture)

from gpuscribe.bench.claims import cluster_claim_rate
from support.postgres import fresh_database, require_postgres

pytestmark = pytest.mark.slow


@pytest.fixture
def empty_database(pg_ok: bool) -> Iterator[str]:  # noqa: F811
    require_postgres(pg_ok)
    with fresh_database() as url:
        yield url


def test_three_nodes_claim_every_task_once(empty_database: str) -> None:
    bench = cluster_claim_rate(empty_database, nodes=3, tasks=600, spec="4x80GiB:NVIDIA H200")
    assert sum(n.claimed for n in bench.per_node) == 600
    assert bench.lost_claims == 0  # windows locked with SKIP LOCKED: no node planned another's
    assert bench.placements_per_second > 0
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute(
            "SELECT state, count(*), max(attempts) FROM tasks GROUP BY state"
        ).fetchall()
        claims = conn.execute(
            "SELECT count(*) FROM task_events WHERE detail LIKE 'attempt %%'"
        ).fetchone()
    assert rows == [("running", 600, 1)]
    assert claims == (600,)
