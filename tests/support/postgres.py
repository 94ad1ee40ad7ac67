"""PostgreSQL for tests: the server at 127.0.0.1:5432 (trust auth, database `test`), a fresh
schema or a fresh database per test, dropped after.

Tests that need PostgreSQL skip with a reason when it is absent, unless
GPUSCRIBE_TEST_REQUIRE_SERVICES=1, where its absence fails them (support.services).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from support.services import require_service

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_BASE, connect_timeout=2).close()
    except Exception:
        return False
    return True


def require_postgres(available: bool) -> None:
    """Skip (or, with GPUSCRIBE_TEST_REQUIRE_SERVICES=1, fail) without a PostgreSQL server."""
    require_service(available, "no PostgreSQL server at 127.0.0.1:5432")


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL whose search_path is a new, empty schema; the schema is dropped after."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database; dropped after (its connections ended first)."""
    import psycopg

    name = f"gpuscribe_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
