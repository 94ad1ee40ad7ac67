"""What only the PostgreSQL store promises: schema per URL, its pool, the queue plan."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from test_store_contract import pg_ok, pg_url  # noqa: F401  (fixtures)

from gpuscribe.domain import NewTask, Priority, TranscriptionOptions
from gpuscribe.store.open import open_store
from gpuscribe.store.postgres import PostgresStore, _without_password

NEW = NewTask(Priority.NORMAL, TranscriptionOptions(), "/data/a.wav", 3.0, "wav")


def test_open_store_takes_both_schemes(pg_url: str) -> None:  # noqa: F811
    for url in (pg_url, pg_url.replace("postgresql://", "postgres://", 1)):
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        task, _ = store.add(NEW, now=1.0)
        assert store.get(task.id) == task
        store.close()


def test_nodes_starting_at_once_apply_the_schema_once(pg_url: str) -> None:  # noqa: F811
    barrier = threading.Barrier(4)

    def start() -> PostgresStore:
        barrier.wait()
        return PostgresStore(pg_url, pool_size=1)

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: start(), range(4)))
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    for store in stores:
        store.close()


def test_more_threads_than_connections_share_the_pool(pg_url: str) -> None:  # noqa: F811
    store = PostgresStore(pg_url, pool_size=2)
    with ThreadPoolExecutor(8) as pool:
        added = list(pool.map(lambda i: store.add(NEW, now=float(i))[1], range(40)))
    assert all(added) and store.count_queued() == 40
    assert store._pool._open <= 2
    store.close()
    with pytest.raises(psycopg.OperationalError):
        store.count_queued()


def test_a_dropped_connection_is_replaced(pg_url: str) -> None:  # noqa: F811
    """After the server drops a pooled connection, one call fails and the next one works."""
    store = PostgresStore(pg_url, pool_size=1)
    assert store.count_queued() == 0
    pid = store._pool._idle[0].info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        store.count_queued()
    assert store.count_queued() == 0
    assert store._pool._idle[0].info.backend_pid != pid
    store.close()


def test_queue_scan_reads_the_index_in_order(pg_url: str) -> None:  # noqa: F811
    store = PostgresStore(pg_url)
    for i in range(30):
        store.add(NEW, now=float(i))
    sql = store._queries["queued_ready"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ANALYZE tasks")
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(f"EXPLAIN {sql}", {"now": 1e9, "limit": 10}).fetchall()
    text = "\n".join(line for (line,) in plan)
    assert "tasks_queue" in text and "Sort" not in text
    store.close()


def test_log_lines_never_show_a_password() -> None:
    assert _without_password("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert _without_password("postgresql://u@h/db") == "postgresql://u@h/db"
