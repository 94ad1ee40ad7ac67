"""What only the SQLite store promises: the file, its pragmas, durability, speed, the plan."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from gpuscribe.domain import NewTask, Priority, TaskState, TranscriptionOptions
from gpuscribe.store.base import Claim
from gpuscribe.store.open import open_store
from gpuscribe.store.sqlite import SqliteStore

NEW = NewTask(Priority.NORMAL, TranscriptionOptions(), "/data/a.wav", 3.0, "wav")


def test_creates_the_parent_directory_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.db"
    store = SqliteStore(str(path))
    task, _ = store.add(NEW, now=1.0)
    store.close()
    again = SqliteStore(str(path))  # the schema is applied again: idempotent
    assert again.get(task.id) == task
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    again.close()


def test_pragmas_of_every_connection(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    conn = store._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone() == {"journal_mode": "wal"}
    assert conn.execute("PRAGMA synchronous").fetchone() == {"synchronous": 2}  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone() == {"foreign_keys": 1}
    assert conn.execute("PRAGMA busy_timeout").fetchone()["timeout"] >= 1000
    store.close()


def test_open_store_resolves_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///var/rel.db")
    assert isinstance(relative, SqliteStore) and (tmp_path / "var" / "rel.db").exists()
    relative.close()
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")  # sqlite:////tmp/...: absolute
    assert isinstance(absolute, SqliteStore) and (tmp_path / "abs.db").exists()
    absolute.close()


def test_queue_scan_is_one_indexed_query(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    sql = store._queries["queued_ready"]
    plan = store._connection().execute(f"EXPLAIN QUERY PLAN {sql}", {"now": 1.0, "limit": 5})
    details = " ".join(row["detail"] for row in plan.fetchall())
    assert "USING INDEX tasks_queue" in details
    assert "TEMP B-TREE" not in details  # rows come in order from the index: no sort
    store.close()


def test_add_takes_well_under_three_milliseconds(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    store.add(NEW, now=0.0)
    count = 200
    start = time.perf_counter()
    for i in range(count):
        store.add(NEW, now=float(i))
    per_add = (time.perf_counter() - start) / count
    store.close()
    print(f"sqlite add: {per_add * 1000:.3f} ms")
    assert per_add < 0.003


def test_a_bad_transaction_rolls_back_and_the_store_goes_on(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    with pytest.raises(sqlite3.IntegrityError), store._write() as session:
        session.run(
            "insert_event", {"task_id": "none", "at": 1.0, "state": "queued", "detail": None}
        )
    task, created = store.add(NEW, now=1.0)
    assert created and store.history(task.id)[0].state == TaskState.QUEUED
    store.close()


def _add_forever(path: str, pipe: multiprocessing.connection.Connection) -> None:
    store = SqliteStore(path)
    for i in range(10_000):
        task, _ = store.add(NEW, now=float(i))
        pipe.send(task.id)


def test_every_acknowledged_add_survives_sigkill(tmp_path: Path) -> None:
    path = str(tmp_path / "durable.db")
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_add_forever, args=(path, sender))
    child.start()
    acknowledged = [receiver.recv() for _ in range(50)]
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    while receiver.poll():
        acknowledged.append(receiver.recv())
    store = SqliteStore(path)
    assert all(store.get(task_id) is not None for task_id in acknowledged)
    store.close()


def _claim_all(path: str, ids: list[str], node: str, out: multiprocessing.Queue[list[str]]) -> None:
    store = SqliteStore(path)
    won = [i for i in ids if store.claim(Claim(i, node, 0, "GPU-0", 1, 30.0), now=2.0) is not None]
    out.put(won)


def test_two_processes_claim_each_task_once(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    store = SqliteStore(path)
    ids = [store.add(NEW, now=1.0)[0].id for _ in range(60)]
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    children = [ctx.Process(target=_claim_all, args=(path, ids, f"n{k}", out)) for k in range(2)]
    for child in children:
        child.start()
    won = out.get(timeout=60) + out.get(timeout=60)
    for child in children:
        child.join()
    assert sorted(won) == sorted(ids)
    assert {t.node for t in store.list(state=TaskState.RUNNING, limit=100)} <= {"n0", "n1"}
    store.close()
