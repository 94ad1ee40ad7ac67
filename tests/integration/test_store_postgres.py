"""What only the PostgreSQL store promises: schema per URL, its pool, the queue plan."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from test_store_contract import pg_ok, pg_url  # noqa: F401  (fixtures)

from gpuscribe.domain import NewTask, Priority, TranscriptionOptions
from gpuscribe.store.open import open_store
from gpuscribe.store.postgres import PostgresStore, _without_password
from gpuscribe.store.sql_loader import migrations
from gpuscribe.store.sqlbase import SchemaTooNew
from support.postgres import fresh_database, require_postgres

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
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,)]
    for store in stores:
        store.close()


@pytest.fixture
def empty_database(pg_ok: bool) -> Iterator[str]:  # noqa: F811
    """A new database with nothing in it, dropped after the test."""
    require_postgres(pg_ok)
    with fresh_database() as url:
        yield url


OPEN_AT = """
import sys, time
from gpuscribe.store.postgres import PostgresStore
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
store = PostgresStore(sys.argv[1])
store.add_sample  # the store opened: its schema is complete
print(sorted(store.counts().by_state.items()))
store.close()
"""


def test_three_processes_starting_at_once_migrate_an_empty_database(
    empty_database: str,
) -> None:
    """Three processes open the store at the same instant on a database with no tables: one
    applies every migration under the advisory lock, the others wait and find them applied."""
    start_at = time.time() + 3.0  # each process has imported everything by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT, empty_database, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "('queued', 0)" in out
    with psycopg.connect(empty_database) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert versions == [(m.version,) for m in migrations("postgres")]
    assert {"tasks", "task_events", "results", "audio_objects", "audio_chunks", "nodes"} <= tables


def test_a_database_of_the_first_schema_is_migrated(pg_url: str) -> None:  # noqa: F811
    """A database made by a gpuscribe from before numbered migrations (schema version 1) takes
    the later migrations and keeps its tasks."""
    first = migrations("postgres")[0]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(first.sql.encode())
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        conn.execute(
            "INSERT INTO tasks (id, state, priority, options, audio_path, audio_seconds, "
            "audio_format, created_at, max_attempts) "
            "VALUES ('old', 'queued', 1, '{}', '/a.wav', 1, 'wav', 1, 3)"
        )
    store = PostgresStore(pg_url)
    assert store.count_queued() == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,)]
    store.close()


def test_a_database_newer_than_this_code_is_refused(pg_url: str) -> None:  # noqa: F811
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    with pytest.raises(SchemaTooNew, match="version 99"):
        PostgresStore(pg_url)


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
