"""The SQLite store: one file, WAL, `synchronous=FULL`; readers use a connection per thread.

Every write runs inside `BEGIN IMMEDIATE ... COMMIT` (the write lock is taken at BEGIN, so two
claims never interleave, even from two processes); a method returns only after its COMMIT.

Writes of one process go through one writer connection with *group commit*: a writer that
finds others waiting leaves the transaction open for them (each write in its own SAVEPOINT),
and the last of the group commits for all, so one fsync serves many concurrent submissions.
Each waits for that COMMIT before it returns. Queueing in-process also keeps threads away from
SQLite's busy handler, which sleeps up to 100 ms between retries; other processes still meet
the busy timeout.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpuscribe.store.sql_loader import load_queries
from gpuscribe.store.sqlbase import Session, SqlTaskStore, migrate

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
MAX_GROUP = 64  # writes sharing one COMMIT at most, so that the first of a group waits little


def _dict_row(cursor: sqlite3.Cursor, row: Sequence[Any]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.row_factory = _dict_row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class _Group:
    """Writes that share one transaction; `done` is set once it committed or failed."""

    def __init__(self) -> None:
        self.size = 0
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupCommit:
    """Runs write blocks one at a time on one connection, committing them in groups."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0
        self._group: _Group | None = None
        self.writes = 0  # write blocks run, and
        self.commits = 0  # COMMITs done for them: fewer when groups formed

    @contextmanager
    def write(self) -> Iterator[sqlite3.Cursor]:
        group = self._enter()
        cursor = self._conn.cursor()
        error: BaseException | None = None
        cursor.execute("SAVEPOINT write")
        try:
            yield cursor
        except BaseException as exc:
            cursor.execute("ROLLBACK TO write")
            error = exc
        cursor.execute("RELEASE write")
        self._leave(group)
        if error is not None:
            raise error
        if group.error is not None:
            raise group.error

    def _enter(self) -> _Group:
        with self._cond:
            self._waiting += 1
            while self._busy:
                self._cond.wait()
            self._waiting -= 1
            self._busy = True
            group = self._group
        if group is None:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._release()
                raise
            group = self._group = _Group()
        group.size += 1
        self.writes += 1
        return group

    def _leave(self, group: _Group) -> None:
        with self._cond:
            hand_over = self._waiting > 0 and group.size < MAX_GROUP
        if hand_over:
            self._release()
            group.done.wait()
            return
        try:
            self.commits += 1
            self._conn.execute("COMMIT")
        except BaseException as exc:
            group.error = exc
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        self._group = None
        group.done.set()
        self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify()


class SqliteStore(SqlTaskStore):
    """`TaskStore` on an SQLite file (created, with its parent directory, when missing)."""

    def __init__(self, path: str) -> None:
        if path in ("", ":memory:") or path.startswith("file:"):
            raise ValueError(f"SqliteStore needs a file path, not {path!r} (use memory:// instead)")
        self.path = path
        self._queries = load_queries("sqlite_queries.sql")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = self._register(connect(path))
        self._writes = GroupCommit(writer)
        with self._write() as s:
            applied = migrate(s, "sqlite")
        if applied:
            log.info("applied schema migrations %s", applied)
        log.info("sqlite store open at %s", path)

    def _register(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                conn.close()
                raise sqlite3.ProgrammingError(f"store {self.path} is closed")
            self._connections.append(conn)
        return conn

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._register(connect(self.path))
        return conn

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._writes.write() as cursor:
            yield Session(cursor, self._queries)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        yield Session(self._connection().cursor(), self._queries)

    def close(self) -> None:
        """Close every connection. Call it once no thread uses the store."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
