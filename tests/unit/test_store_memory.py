"""The in-memory store's own promises, the URL parser and the SQL loader (no database)."""

from __future__ import annotations

import pytest

from gpuscribe.domain import NewTask, Priority, TaskState, TranscriptionOptions
from gpuscribe.store.base import Claim
from gpuscribe.store.memory import InMemoryStore
from gpuscribe.store.open import open_store, sqlite_path
from gpuscribe.store.sql_loader import load_queries, parse_queries

NEW = NewTask(Priority.HIGH, TranscriptionOptions(), "/data/a.wav", 3.0, "wav")


def test_callers_get_copies_not_the_stored_task() -> None:
    store = InMemoryStore()
    task, _ = store.add(NEW, now=1.0)
    task.state = TaskState.FAILED
    listed = store.list_tasks()[0]
    listed.progress = 0.9
    stored = store.get(task.id)
    assert stored is not None and stored.state == TaskState.QUEUED and stored.progress == 0.0


def test_claim_returns_a_copy_and_history_is_a_copy() -> None:
    store = InMemoryStore()
    task, _ = store.add(NEW, now=1.0)
    claimed = store.claim(Claim(task.id, "n", 0, "GPU-0", 1, 30.0), now=2.0)
    assert claimed is not None
    claimed.lease_token = "forged"
    assert not store.set_progress(task.id, "forged", 0.5)
    store.history(task.id).clear()
    assert len(store.history(task.id)) == 2


def test_open_store_memory_and_bad_urls() -> None:
    assert isinstance(open_store("memory://"), InMemoryStore)
    for bad in ("mysql://x/y", "", "/var/gpuscribe.db", "sqlite://", "sqlite:///"):
        with pytest.raises(ValueError, match="URL"):
            open_store(bad)


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///var/gpuscribe.db") == "var/gpuscribe.db"
    assert sqlite_path("sqlite:////srv/data/gpuscribe.db") == "/srv/data/gpuscribe.db"


def test_parse_named_queries() -> None:
    text = """
    -- a file comment
    -- name: first
    SELECT 1
    -- a comment inside
    FROM t;

    -- name: second
    UPDATE t SET a = :a;
    """
    assert parse_queries(text) == {
        "first": "SELECT 1\n    FROM t",
        "second": "UPDATE t SET a = :a",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;", "defined twice"),
        ("SELECT 1;\n-- name: a\nSELECT 2;", "before the first"),
        ("-- name: a\n-- name: b\nSELECT 2;", "empty"),
    ],
)
def test_bad_query_files(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_queries(text)


def test_both_dialects_define_the_same_queries() -> None:
    sqlite = load_queries("sqlite_queries.sql")
    postgres = load_queries("postgres_queries.sql")
    assert sqlite.keys() == postgres.keys()
    assert {"insert_task", "claim", "complete", "queued_ready", "prune"} <= sqlite.keys()
