"""`open_store(url)`: the store a URL names."""

from __future__ import annotations

from urllib.parse import urlsplit

from gpuscribe.store.base import TaskStore


def open_store(url: str) -> TaskStore:
    """`memory://`, `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`,
    `postgresql://...` or `postgres://...`. Anything else raises ValueError."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme == "memory":
        from gpuscribe.store.memory import InMemoryStore

        return InMemoryStore()
    if scheme == "sqlite":
        from gpuscribe.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from gpuscribe.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unsupported store URL {url!r}: expected memory://, sqlite:///path.db or postgresql://..."
    )


def sqlite_path(url: str) -> str:
    """`sqlite:///var/x.db` -> `var/x.db`; `sqlite:////abs/x.db` -> `/abs/x.db`."""
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"invalid SQLite store URL {url!r}: expected sqlite:///path.db")
    return url[len(prefix) :]
