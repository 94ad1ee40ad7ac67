"""The cluster throughput benchmark: the same simulated stream through 1 node x 4 GPUs and 2
nodes x 2 GPUs on one PostgreSQL, every task completed in both. It asserts what completed, not
a speed (`python -m gpuscribe.bench.cluster` prints the ratio)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_store_contract import pg_ok  # noqa: F401  (fixture)

from gpuscribe.bench.cluster import cluster_throughput
from support.postgres import fresh_database, require_postgres

pytestmark = pytest.mark.slow


@pytest.fixture
def empty_database(pg_ok: bool) -> Iterator[str]:  # noqa: F811
    require_postgres(pg_ok)
    with fresh_database() as url:
        yield url


def test_one_node_of_four_and_two_nodes_of_two_complete_the_same_stream(
    empty_database: str,
) -> None:
    bench = cluster_throughput(empty_database, tasks=40)
    for layout in (bench.one_node, bench.two_nodes):
        assert layout.tasks == 40 and layout.audio_seconds_per_second > 0
    assert (bench.one_node.nodes, bench.one_node.gpus_per_node) == (1, 4)
    assert (bench.two_nodes.nodes, bench.two_nodes.gpus_per_node) == (2, 2)
    assert bench.ratio > 0
