"""The PostgreSQL store, for several nodes sharing one queue (psycopg 3).

Connections come from a small pool of its own. Writes run in one transaction each (READ
COMMITTED): every state change is a conditional `UPDATE ... WHERE state = ...` (and the lease
token), which PostgreSQL re-checks on the newest row version after a concurrent writer commits,
so a task is claimed once and a stale lease changes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gpuscribe.store.sql_loader import load_queries
from gpuscribe.store.sqlbase import Session, SqlTaskStore, migrate

log = logging.getLogger(__name__)


class ConnectionPool:
    """At most `size` connections, made on demand; a broken connection is dropped."""

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._size = size
        self._idle: list[psycopg.Connection[Any]] = []
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._take()
        try:
            yield conn
        except BaseException:
            self._give_back(conn)
            raise
        self._give_back(conn)

    def _take(self) -> psycopg.Connection[Any]:
        with self._cond:
            while not self._idle and self._open >= self._size and not self._closed:
                self._cond.wait()
            if self._closed:
                raise psycopg.OperationalError("the store is closed")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return psycopg.connect(self._url, autocommit=True, row_factory=dict_row)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        healthy = (
            not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )
        with self._cond:
            if healthy and not self._closed:
                self._idle.append(conn)
            else:
                self._open -= 1
            self._cond.notify()
        if not healthy or self._closed:
            conn.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()


class PostgresStore(SqlTaskStore):
    """`TaskStore` on PostgreSQL. `url`: a libpq URL (`postgresql://user@host/db?options=...`)."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self._queries = load_queries("postgres_queries.sql")
        self.url = url
        self._pool = ConnectionPool(url, pool_size)
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise
        log.info("postgres store open (%s)", _without_password(url))

    def _migrate(self) -> None:
        with self._write() as s:
            applied = migrate(s, "postgres")
        if applied:
            log.info("applied schema migrations %s", applied)

    @property
    def pool(self) -> ConnectionPool:
        """The store's connections, which the PostgreSQL audio store shares."""
        return self._pool

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield Session(cursor, self._queries)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._pool.connection() as conn, conn.cursor() as cursor:
            yield Session(cursor, self._queries)

    def close(self) -> None:
        self._pool.close()


def _without_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme_user = head.rsplit(":", 1)[0]
    return f"{scheme_user}:***@{tail}"
