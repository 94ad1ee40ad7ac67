"""The logic of the SQL stores, written once over named queries.

A subclass provides sessions: `_write()` runs one transaction (BEGIN IMMEDIATE on SQLite) and
commits before it returns; `_read()` runs reads. The queries of both SQL dialects have the same
names and parameters, so every method below means the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import abc
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from gpuscribe.domain import NewTask, Priority, Task, TaskEvent, TaskState, Transcript
from gpuscribe.memory.types import CalibrationSample, ProfileKey
from gpuscribe.store import rows
from gpuscribe.store.base import Claim, NodeRecord, QueueCounts, QueueLimitReached
from gpuscribe.store.sql_loader import migrations

Params = Mapping[str, Any] | None


class Cursor(Protocol):
    """What sqlite3 and psycopg cursors both offer (rows come back as dicts)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Any, /) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


class Session:
    """Named queries run on one cursor."""

    def __init__(self, cursor: Cursor, queries: Mapping[str, str]) -> None:
        self._cursor = cursor
        self._queries = queries

    def rows(self, name: str, params: Params = None) -> list[dict[str, Any]]:
        self._cursor.execute(self._queries[name], params or {})
        return list(self._cursor.fetchall())

    def one(self, name: str, params: Params = None) -> dict[str, Any] | None:
        found = self.rows(name, params)
        return found[0] if found else None

    def run(self, name: str, params: Params = None) -> int:
        """Execute; return the number of rows changed."""
        self._cursor.execute(self._queries[name], params or {})
        return int(self._cursor.rowcount)

    def execute(self, sql: str) -> None:
        """Run SQL text that takes no parameters (a migration)."""
        self._cursor.execute(sql)

    def many(self, name: str, params: Iterable[Mapping[str, Any]]) -> None:
        batch = list(params)
        if batch:
            self._cursor.executemany(self._queries[name], batch)

    def event(self, task_id: str, at: float, state: TaskState, detail: str | None) -> None:
        self.run("insert_event", _event(task_id, at, state, detail))


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer gpuscribe than this one."""


def migrate(s: Session, dialect: str) -> list[int]:
    """Apply the migrations this database lacks, in order, inside the caller's transaction,
    under the dialect's migration lock (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE),
    so that nodes starting at the same moment migrate once. Returns the versions applied."""
    s.one("migration_lock")
    s.run("schema_version_table")
    applied = {int(r["version"]) for r in s.rows("schema_versions")}
    known = migrations(dialect)
    newest = max(applied, default=0)
    if newest > len(known):
        raise SchemaTooNew(
            f"the database schema is at version {newest}, newer than this gpuscribe knows "
            f"({len(known)}): upgrade gpuscribe on this node"
        )
    done: list[int] = []
    for migration in known:
        if migration.version not in applied:
            for statement in _statements(migration.sql, dialect):
                s.execute(statement)
            s.run("record_version", {"version": migration.version, "now": time.time()})
            done.append(migration.version)
    return done


def _statements(script: str, dialect: str) -> list[str]:
    """PostgreSQL runs a whole script in one call; sqlite3 runs one statement at a time."""
    if dialect != "sqlite":
        return [script]
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in pending.splitlines()
    ):
        raise ValueError(f"unterminated SQL statement in a migration: {pending.strip()[:80]!r}")
    return statements


def _claim(s: Session, claim: Claim, now: float) -> Task | None:
    params = {
        "id": claim.task_id,
        "node": claim.node,
        "gpu_index": claim.gpu_index,
        "gpu_uuid": claim.gpu_uuid,
        "memory_estimate_bytes": claim.memory_estimate_bytes,
        "now": now,
        "token": secrets.token_hex(16),
        "expires": now + claim.lease_seconds,
    }
    row = s.one("claim", params)
    if row is None:
        return None
    detail = rows.claimed_detail(claim.node, claim.gpu_index, int(row["attempts"]))
    s.event(claim.task_id, now, TaskState.RUNNING, detail)
    return rows.task_from_row(row)


def _event(task_id: str, at: float, state: TaskState, detail: str | None) -> dict[str, Any]:
    return {"task_id": task_id, "at": at, "state": state.value, "detail": detail}


class SqlTaskStore(abc.ABC):
    """`TaskStore` over a SQL database; subclasses own connections and transactions."""

    @abc.abstractmethod
    def _write(self) -> AbstractContextManager[Session]:
        """One write transaction, committed when the block ends without an exception."""

    @abc.abstractmethod
    def _read(self) -> AbstractContextManager[Session]:
        """A session for reads."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- submission and reading -------------------------------------------------------------
    def add(self, new: NewTask, *, now: float, max_queued: int | None = None) -> tuple[Task, bool]:
        if new.idempotency_key is not None:
            existing = self.task_by_key(new.idempotency_key)
            if existing is not None:
                return existing, False
        task_id = rows.new_task_id()
        with self._write() as s:
            if max_queued is not None:
                s.one("lock_queue")
                found = s.one("count_queued")
                queued = int(found["n"]) if found else 0
                if queued >= max_queued:
                    raise QueueLimitReached(queued)
            row = s.one("insert_task", rows.new_task_params(task_id, new, now))
            if row is not None:
                s.event(task_id, now, TaskState.QUEUED, rows.SUBMITTED)
        if row is not None:
            return rows.task_from_row(row), True
        # Another add with this key committed first: ours did nothing (ON CONFLICT DO NOTHING).
        existing = self.task_by_key(new.idempotency_key or "")
        if existing is None:
            raise RuntimeError(f"idempotency key {new.idempotency_key!r} conflicts but is absent")
        return existing, False

    def task_by_key(self, key: str) -> Task | None:
        with self._read() as s:
            row = s.one("task_by_key", {"key": key})
        return None if row is None else rows.task_from_row(row)

    def get(self, task_id: str) -> Task | None:
        with self._read() as s:
            row = s.one("task_by_id", {"id": task_id})
        return None if row is None else rows.task_from_row(row)

    def list_tasks(self, *, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        with self._read() as s:
            if state is None:
                found = s.rows("list_all", {"limit": limit})
            else:
                found = s.rows("list_by_state", {"state": state.value, "limit": limit})
        return [rows.task_from_row(r) for r in found]

    def queued(self, *, now: float, limit: int, priority: Priority | None = None) -> list[Task]:
        with self._read() as s:
            if priority is None:
                found = s.rows("queued_ready", {"now": now, "limit": limit})
            else:
                params = {"now": now, "limit": limit, "priority": int(priority)}
                found = s.rows("queued_ready_priority", params)
        return [rows.task_from_row(r) for r in found]

    def count_queued(self) -> int:
        with self._read() as s:
            row = s.one("count_queued")
        return int(row["n"]) if row else 0

    def counts(self) -> QueueCounts:
        with self._read() as s:
            states = s.rows("counts_by_state")
            priorities = s.rows("queued_by_priority")
        by_state = {state.value: 0 for state in TaskState}
        by_state.update({r["state"]: int(r["n"]) for r in states})
        by_priority = {p.label: 0 for p in Priority}
        by_priority.update({Priority(r["priority"]).label: int(r["n"]) for r in priorities})
        return QueueCounts(by_state=by_state, by_priority=by_priority)

    def history(self, task_id: str) -> list[TaskEvent]:
        with self._read() as s:
            found = s.rows("events_of", {"id": task_id})
        return [rows.event_from_row(r) for r in found]

    def result(self, task_id: str) -> Transcript | None:
        with self._read() as s:
            row = s.one("result_of", {"id": task_id})
        return None if row is None else rows.transcript_from_json(row["transcript"])

    # --- the scheduler and workers -----------------------------------------------------------
    def claim(self, claim: Claim, *, now: float) -> Task | None:
        with self._write() as s:
            return _claim(s, claim, now)

    def claim_window(
        self,
        *,
        now: float,
        limit: int,
        decide: Callable[[list[Task]], Sequence[Claim]],
    ) -> tuple[list[Task], list[Task]]:
        with self._write() as s:
            window = [
                rows.task_from_row(r)
                for priority in Priority
                for r in s.rows(
                    "lock_queued_window", {"now": now, "limit": limit, "priority": int(priority)}
                )
            ]
            claimed = [
                task for task in (_claim(s, c, now) for c in decide(window)) if task is not None
            ]
        return window, claimed

    def renew(
        self, leases: Sequence[tuple[str, str]], *, lease_seconds: float, now: float
    ) -> set[str]:
        held: set[str] = set()
        if not leases:
            return held
        with self._write() as s:
            for task_id, token in leases:
                params = {"id": task_id, "token": token, "expires": now + lease_seconds}
                if s.run("renew", params) == 1:
                    held.add(task_id)
        return held

    def set_progress(self, task_id: str, token: str, progress: float) -> bool:
        params = {"id": task_id, "token": token, "progress": progress}
        with self._write() as s:
            return s.run("set_progress", params) == 1

    def set_progress_many(self, updates: Sequence[tuple[str, str, float]]) -> None:
        if not updates:
            return
        with self._write() as s:
            s.many("set_progress", ({"id": i, "token": k, "progress": p} for i, k, p in updates))

    def complete(
        self, task_id: str, token: str, result: Transcript, *, peak_bytes: int | None, now: float
    ) -> bool:
        params = {"id": task_id, "token": token, "peak": peak_bytes, "now": now}
        with self._write() as s:
            if s.run("complete", params) != 1:
                return False
            s.run("insert_result", {"id": task_id, "transcript": rows.transcript_json(result)})
            if result.decoding_started_at is not None:
                began = result.decoding_started_at
                s.event(task_id, began, TaskState.RUNNING, rows.DECODING_BEGAN)
            s.event(task_id, now, TaskState.COMPLETED, None)
        return True

    def fail(
        self, task_id: str, token: str, error: str, *, retry_at: float | None, now: float
    ) -> Task | None:
        params = {"id": task_id, "token": token, "error": error, "now": now}
        with self._write() as s:
            row = None
            if retry_at is not None:
                row = s.one("retry", {**params, "retry_at": retry_at})
            if row is not None:
                s.event(task_id, now, TaskState.QUEUED, rows.retry_detail(error))
            else:
                row = s.one("fail_running", params)
                if row is None:
                    return None
                s.event(task_id, now, TaskState.FAILED, error)
        return rows.task_from_row(row)

    def unclaim(self, task_id: str, token: str, *, reason: str, now: float) -> Task | None:
        params = {"id": task_id, "token": token, "reason": reason, "now": now}
        with self._write() as s:
            row = s.one("unclaim", params)
            if row is not None:
                s.event(task_id, now, TaskState.QUEUED, rows.unclaimed_detail(reason))
            else:
                row = s.one("unclaim_cancelled", params)
                if row is None:
                    return None
                s.event(task_id, now, TaskState.CANCELLED, rows.CANCELLED_UNCLAIMED)
        return rows.task_from_row(row)

    def cancels_requested(self, *, node: str) -> set[str]:
        with self._read() as s:
            found = s.rows("cancels_requested", {"node": node})
        return {str(r["id"]) for r in found}

    def cancel(self, task_id: str, *, now: float) -> Task | None:
        params = {"id": task_id, "now": now}
        with self._write() as s:
            if s.run("cancel_queued", params) == 1:
                s.event(task_id, now, TaskState.CANCELLED, rows.CANCELLED_QUEUED)
            elif s.run("request_cancel", params) == 1:
                s.event(task_id, now, TaskState.RUNNING, rows.CANCEL_REQUESTED)
            row = s.one("task_by_id", params)
        return None if row is None else rows.task_from_row(row)

    def finish_cancel(self, task_id: str, token: str, *, now: float) -> bool:
        with self._write() as s:
            if s.run("finish_cancel", {"id": task_id, "token": token, "now": now}) != 1:
                return False
            s.event(task_id, now, TaskState.CANCELLED, rows.CANCELLED_RUNNING)
        return True

    def set_wait_reasons(self, reasons: dict[str, str | None]) -> None:
        if not reasons:
            return
        with self._write() as s:
            s.many("set_wait_reason", ({"id": k, "reason": v} for k, v in reasons.items()))

    def fail_queued(self, task_id: str, error: str, *, now: float) -> bool:
        with self._write() as s:
            if s.run("fail_queued", {"id": task_id, "error": error, "now": now}) != 1:
                return False
            s.event(task_id, now, TaskState.FAILED, error)
        return True

    def recover_expired(self, *, now: float) -> list[str]:
        params = {"now": now}
        events: list[dict[str, Any]] = []
        with self._write() as s:
            for row in s.rows("expire_cancelled", params):
                events.append(
                    _event(row["id"], now, TaskState.CANCELLED, rows.LEASE_EXPIRED_CANCELLED)
                )
            for row in s.rows("expire_exhausted", params):
                events.append(_event(row["id"], now, TaskState.FAILED, row["error"]))
            for row in s.rows("expire_requeue", params):
                events.append(_event(row["id"], now, TaskState.QUEUED, rows.LEASE_EXPIRED))
            s.many("insert_event", events)
        return [e["task_id"] for e in events]

    def prune(self, *, finished_before: float) -> list[Task]:
        with self._write() as s:
            found = s.rows("prune", {"before": finished_before})
            s.run("nodes_forget", {"before": finished_before})
        return [rows.task_from_row(r) for r in found]

    # --- nodes ----------------------------------------------------------------------------------
    def heartbeat_node(self, node: NodeRecord) -> None:
        with self._write() as s:
            s.run("node_heartbeat", rows.node_params(node))

    def nodes(self, *, now: float) -> list[NodeRecord]:
        with self._read() as s:
            found = s.rows("live_nodes", {"now": now})
        return [rows.node_from_row(r) for r in found]

    def remove_node(self, name: str) -> None:
        with self._write() as s:
            s.run("node_remove", {"name": name})

    # --- calibration --------------------------------------------------------------------------
    def add_sample(self, sample: CalibrationSample) -> None:
        with self._write() as s:
            s.run("insert_sample", rows.sample_params(sample))

    def samples(self, key: ProfileKey, *, limit: int) -> list[CalibrationSample]:
        with self._read() as s:
            found = s.rows("samples_of", {**rows.key_params(key), "limit": limit})
        return [rows.sample_from_row(r) for r in found]

    def all_samples(self, *, per_key_limit: int) -> Iterator[CalibrationSample]:
        with self._read() as s:
            found = s.rows("all_samples", {"limit": per_key_limit})
        return iter([rows.sample_from_row(r) for r in found])
