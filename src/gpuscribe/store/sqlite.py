"""The SQLite store: one file, WAL, `synchronous=FULL`, one connection per thread.

Every write runs in `BEGIN IMMEDIATE ... COMMIT` (the write lock is taken at BEGIN, so two
claims never interleave, even from two processes); a method returns only after COMMIT.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpuscribe.store.sql_loader import load_queries, read_sql
from gpuscribe.store.sqlbase import Session, SqlTaskStore

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000


def _dict_row(cursor: sqlite3.Cursor, row: Sequence[Any]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


class SqliteStore(SqlTaskStore):
    """`TaskStore` on an SQLite file (created, with its parent directory, when missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._queries = load_queries("sqlite_queries.sql")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._connection().executescript(read_sql("sqlite_schema.sql"))
        log.info("sqlite store open at %s", path)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise sqlite3.ProgrammingError(f"store {self.path} is closed")
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        conn.row_factory = _dict_row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[Session]:
        conn = self._connection()
        cursor = conn.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield Session(cursor, self._queries)
            cursor.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[Session]:
        yield Session(self._connection().cursor(), self._queries)

    def close(self) -> None:
        """Close every thread's connection. Call it once no thread uses the store."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
