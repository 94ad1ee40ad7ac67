"""One contract, three stores: in-memory, SQLite and PostgreSQL must mean the same."""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuscribe.domain import (
    NewTask,
    Priority,
    Segment,
    Task,
    TaskKind,
    TaskState,
    Transcript,
    TranscriptionOptions,
)
from gpuscribe.memory.types import CalibrationSample, ProfileKey
from gpuscribe.store.base import Claim, NodeRecord, QueueCounts, QueueLimitReached, TaskStore
from gpuscribe.store.memory import InMemoryStore
from gpuscribe.store.sqlite import SqliteStore
from support.postgres import fresh_schema, postgres_available, require_postgres

StoreFactory = Callable[[], TaskStore]


@pytest.fixture(scope="session")
def pg_ok() -> bool:
    return postgres_available()


@pytest.fixture
def pg_url(pg_ok: bool) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    require_postgres(pg_ok)
    with fresh_schema() as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores on one database: two calls act like two processes (memory: one store)."""
    opened: list[TaskStore] = []
    if request.param == "memory":
        shared = InMemoryStore()

        def make() -> TaskStore:
            return shared
    elif request.param == "sqlite":

        def make() -> TaskStore:
            opened.append(SqliteStore(str(tmp_path / "store.db")))
            return opened[-1]
    else:
        from gpuscribe.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_url")

        def make() -> TaskStore:
            opened.append(PostgresStore(url))
            return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(factory: StoreFactory) -> TaskStore:
    return factory()


def new_task(
    key: str | None = None, *, priority: Priority = Priority.NORMAL, max_attempts: int = 3
) -> NewTask:
    return NewTask(
        priority=priority,
        options=TranscriptionOptions(model="base", language="de", task=TaskKind.TRANSLATE),
        audio_path="/data/audio/a.flac",
        audio_seconds=12.5,
        audio_format="flac",
        original_filename="meeting.flac",
        idempotency_key=key,
        max_attempts=max_attempts,
    )


def claim_of(task_id: str, gpu: int = 0, lease: float = 30.0) -> Claim:
    return Claim(task_id, "node-a", gpu, f"GPU-{gpu}", 2_000_000_000, lease)


TRANSCRIPT = Transcript(
    text="hallo welt",
    language="de",
    duration=12.5,
    segments=(Segment(id=0, start=0.0, end=2.0, text="hallo welt", tokens=(1, 2)),),
)


def running(store: TaskStore, now: float = 100.0, **kw: object) -> tuple[str, str]:
    task, _ = store.add(new_task(**kw), now=now)  # type: ignore[arg-type]
    claimed = store.claim(claim_of(task.id), now=now)
    assert claimed is not None and claimed.lease_token is not None
    return task.id, claimed.lease_token


# --- submission and reading ---------------------------------------------------------------
def test_add_stores_every_field_and_a_history_line(store: TaskStore) -> None:
    task, created = store.add(new_task("k1", priority=Priority.HIGH), now=50.0)
    assert created
    assert uuid.UUID(task.id)
    got = store.get(task.id)
    assert got == task
    assert got.state == TaskState.QUEUED and got.priority == Priority.HIGH
    assert got.options == new_task().options
    assert (got.audio_path, got.audio_seconds, got.audio_format) == (
        "/data/audio/a.flac",
        12.5,
        "flac",
    )
    assert (got.original_filename, got.idempotency_key) == ("meeting.flac", "k1")
    assert (got.created_at, got.attempts, got.max_attempts, got.not_before) == (50.0, 0, 3, 0.0)
    assert got.lease_token is None and not got.cancel_requested
    assert [(e.state, e.at) for e in store.history(task.id)] == [(TaskState.QUEUED, 50.0)]
    assert store.get("no-such-task") is None


def test_repeated_idempotency_key_returns_the_first_task(store: TaskStore) -> None:
    first, created = store.add(new_task("same"), now=1.0)
    again, created_again = store.add(new_task("same"), now=2.0)
    assert created and not created_again
    assert again == first
    other, created_other = store.add(new_task("other"), now=3.0)
    assert created_other and other.id != first.id
    no_key_1, _ = store.add(new_task(None), now=4.0)
    no_key_2, created_no_key = store.add(new_task(None), now=4.0)
    assert created_no_key and no_key_1.id != no_key_2.id


def test_a_task_is_found_by_its_idempotency_key(store: TaskStore) -> None:
    first, _ = store.add(new_task("k1"), now=1.0)
    found = store.task_by_key("k1")
    assert found is not None and found.id == first.id
    assert store.task_by_key("k2") is None


def test_concurrent_adds_of_one_key_make_one_task(factory: StoreFactory) -> None:
    stores = [factory(), factory()]
    barrier = threading.Barrier(8)

    def add(i: int) -> tuple[str, bool]:
        barrier.wait()
        task, created = stores[i % 2].add(new_task("race"), now=float(i))
        return task.id, created

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(add, range(8)))
    assert len({task_id for task_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    assert stores[0].count_queued() == 1


def test_queue_limit_holds_under_concurrent_adds(factory: StoreFactory) -> None:
    stores = [factory(), factory()]
    barrier = threading.Barrier(12)

    def add(i: int) -> bool:
        barrier.wait()
        try:
            stores[i % 2].add(new_task(f"k{i}"), now=float(i), max_queued=5)
        except QueueLimitReached:
            return False
        return True

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(add, range(12)))
    assert sum(outcomes) == 5
    assert stores[0].count_queued() == 5
    first_accepted = outcomes.index(True)
    _, created = stores[1].add(new_task(f"k{first_accepted}"), now=99.0, max_queued=5)
    assert not created  # a repeated key is answered with its task, never refused


def test_queued_of_one_priority(store: TaskStore) -> None:
    low = [store.add(new_task(priority=Priority.LOW), now=float(i))[0].id for i in range(3)]
    urgent = store.add(new_task(priority=Priority.URGENT), now=10.0)[0].id
    assert [t.id for t in store.queued(now=20.0, limit=10, priority=Priority.LOW)] == low
    assert [t.id for t in store.queued(now=20.0, limit=2, priority=Priority.LOW)] == low[:2]
    assert [t.id for t in store.queued(now=20.0, limit=10, priority=Priority.URGENT)] == [urgent]
    assert store.queued(now=20.0, limit=10, priority=Priority.HIGH) == []


def test_queued_is_oldest_first_and_ready_only(store: TaskStore) -> None:
    ids = [store.add(new_task(), now=float(t))[0].id for t in (3, 1, 2)]
    later_id, token = running(store, now=0.5)
    store.fail(later_id, token, "boom", retry_at=60.0, now=0.6)
    assert [t.id for t in store.queued(now=10.0, limit=10)] == [ids[1], ids[2], ids[0]]
    assert [t.id for t in store.queued(now=10.0, limit=2)] == [ids[1], ids[2]]
    assert store.queued(now=60.0, limit=10)[0].id == later_id
    assert store.count_queued() == 4


def test_list_is_newest_first_by_state(store: TaskStore) -> None:
    ids = [store.add(new_task(), now=float(t))[0].id for t in range(4)]
    store.cancel(ids[0], now=9.0)
    assert [t.id for t in store.list_tasks()] == ids[::-1]
    assert [t.id for t in store.list_tasks(limit=2)] == ids[:1:-1]
    assert [t.id for t in store.list_tasks(state=TaskState.QUEUED)] == ids[:0:-1]
    assert [t.id for t in store.list_tasks(state=TaskState.CANCELLED)] == [ids[0]]


def test_counts_by_state_and_queued_priority(store: TaskStore) -> None:
    store.add(new_task(priority=Priority.URGENT), now=1.0)
    store.add(new_task(priority=Priority.LOW), now=1.0)
    task_id, _ = running(store, priority=Priority.LOW)
    counts = store.counts()
    assert counts.by_state == {
        "queued": 2, "running": 1, "completed": 0, "failed": 0, "cancelled": 0
    }  # fmt: skip
    assert counts.by_priority == {"urgent": 1, "high": 0, "normal": 0, "low": 1}
    assert store.get(task_id) is not None


# --- claims and leases ----------------------------------------------------------------------
def test_claim_takes_a_queued_task_once(store: TaskStore) -> None:
    task, _ = store.add(new_task(), now=1.0)
    store.set_wait_reasons({task.id: "no GPU has 5 GiB free"})
    claimed = store.claim(claim_of(task.id, gpu=1, lease=20.0), now=5.0)
    assert claimed is not None
    assert claimed.state == TaskState.RUNNING and claimed.attempts == 1
    assert (claimed.node, claimed.gpu_index, claimed.gpu_uuid) == ("node-a", 1, "GPU-1")
    assert claimed.memory_estimate_bytes == 2_000_000_000
    assert claimed.started_at == 5.0 and claimed.lease_expires_at == 25.0
    assert claimed.lease_token and len(claimed.lease_token) >= 32
    assert claimed.wait_reason is None
    assert store.get(task.id) == claimed
    assert store.claim(claim_of(task.id), now=6.0) is None
    assert store.claim(claim_of("no-such-task"), now=6.0) is None
    assert [e.state for e in store.history(task.id)] == [TaskState.QUEUED, TaskState.RUNNING]


def test_claim_respects_not_before_and_state(store: TaskStore) -> None:
    task_id, token = running(store)
    assert store.fail(task_id, token, "oom", retry_at=200.0, now=101.0)
    assert store.claim(claim_of(task_id), now=150.0) is None
    again = store.claim(claim_of(task_id), now=200.0)
    assert again is not None and again.attempts == 2 and again.lease_token != token
    cancelled, _ = store.add(new_task(), now=1.0)
    store.cancel(cancelled.id, now=2.0)
    assert store.claim(claim_of(cancelled.id), now=3.0) is None


def test_racing_claims_from_two_stores_claim_each_task_once(factory: StoreFactory) -> None:
    stores = [factory(), factory()]
    ids = [stores[0].add(new_task(), now=1.0)[0].id for _ in range(40)]
    barrier = threading.Barrier(4)

    def claim_all(worker: int) -> list[str]:
        barrier.wait()
        store = stores[worker % 2]
        return [i for i in ids if store.claim(claim_of(i, gpu=worker), now=2.0) is not None]

    with ThreadPoolExecutor(4) as pool:
        won = [i for claimed in pool.map(claim_all, range(4)) for i in claimed]
    assert sorted(won) == sorted(ids)
    assert all(stores[1].get(i).attempts == 1 for i in ids)  # type: ignore[union-attr]


def test_renew_extends_only_held_leases(store: TaskStore) -> None:
    a, token_a = running(store)
    b, token_b = running(store)
    store.complete(b, token_b, TRANSCRIPT, peak_bytes=None, now=101.0)
    held = store.renew([(a, token_a), (b, token_b), (a, "wrong")], lease_seconds=30.0, now=110.0)
    assert held == {a}
    assert store.get(a).lease_expires_at == 140.0  # type: ignore[union-attr]
    assert store.renew([], lease_seconds=30.0, now=110.0) == set()


def test_stale_token_changes_nothing(store: TaskStore) -> None:
    task_id, _ = running(store)
    before = store.get(task_id)
    assert not store.set_progress(task_id, "stale", 0.5)
    assert not store.complete(task_id, "stale", TRANSCRIPT, peak_bytes=1, now=101.0)
    assert not store.fail(task_id, "stale", "x", retry_at=None, now=101.0)
    assert not store.finish_cancel(task_id, "stale", now=101.0)
    assert not store.unclaim(task_id, "stale", reason="x", now=101.0)
    assert store.get(task_id) == before
    assert store.result(task_id) is None
    assert not store.set_progress("no-such-task", "stale", 0.5)


def test_progress_and_complete(store: TaskStore) -> None:
    task_id, token = running(store)
    assert store.set_progress(task_id, token, 0.25)
    assert store.get(task_id).progress == 0.25  # type: ignore[union-attr]
    assert store.complete(task_id, token, TRANSCRIPT, peak_bytes=3_000_000_000, now=120.0)
    done = store.get(task_id)
    assert done is not None and done.state == TaskState.COMPLETED
    assert (done.progress, done.memory_peak_bytes, done.finished_at) == (1.0, 3_000_000_000, 120.0)
    assert done.lease_token is None and done.lease_expires_at is None
    assert store.result(task_id) == TRANSCRIPT
    assert store.history(task_id)[-1].state == TaskState.COMPLETED
    assert not store.complete(task_id, token, TRANSCRIPT, peak_bytes=None, now=121.0)
    assert not store.set_progress(task_id, token, 0.5)


def test_the_history_says_when_decoding_began(store: TaskStore) -> None:
    task_id, token = running(store)
    result = dataclasses.replace(TRANSCRIPT, decoding_started_at=100.75)
    assert store.complete(task_id, token, result, peak_bytes=None, now=120.0)
    *_, began, done = store.history(task_id)
    assert (began.at, began.state, began.detail) == (100.75, TaskState.RUNNING, "decoding began")
    assert (done.at, done.state) == (120.0, TaskState.COMPLETED)
    assert store.result(task_id) == TRANSCRIPT  # not part of the result


def test_fail_retries_then_fails_keeping_the_history(store: TaskStore) -> None:
    task_id, token = running(store, max_attempts=2)
    outcome = store.fail(task_id, token, "CUDA out of memory", retry_at=105.0, now=101.0)
    retried = store.get(task_id)
    assert outcome is not None and outcome == retried  # the outcome, with no read to learn it
    assert retried is not None and retried.state == TaskState.QUEUED
    assert retried.not_before == 105.0 and retried.lease_token is None
    assert retried.gpu_index is None
    second = store.claim(claim_of(task_id), now=106.0)
    assert second is not None and second.lease_token is not None and second.attempts == 2
    outcome = store.fail(task_id, second.lease_token, "decoder crashed", retry_at=110.0, now=107.0)
    failed = store.get(task_id)
    assert outcome is not None and outcome == failed
    assert failed is not None and failed.state == TaskState.FAILED
    assert (failed.error, failed.finished_at, failed.lease_token) == (
        "decoder crashed",
        107.0,
        None,
    )
    assert [(e.state, e.detail) for e in store.history(task_id)][1:] == [
        (TaskState.RUNNING, "attempt 1 on node-a gpu 0"),
        (TaskState.QUEUED, "retry: CUDA out of memory"),
        (TaskState.RUNNING, "attempt 2 on node-a gpu 0"),
        (TaskState.FAILED, "decoder crashed"),
    ]


def test_fail_without_retry_is_final(store: TaskStore) -> None:
    task_id, token = running(store)
    assert store.fail(task_id, token, "bad audio", retry_at=None, now=101.0)
    failed = store.get(task_id)
    assert failed is not None and failed.state == TaskState.FAILED and failed.attempts == 1


def test_unclaim_gives_the_claim_and_its_attempt_back(store: TaskStore) -> None:
    task_id, token = running(store, max_attempts=1)
    back = store.unclaim(task_id, token, reason="the GPU filled since the plan", now=101.0)
    task = store.get(task_id)
    assert back is not None and back == task  # the outcome, with no read to learn it
    assert task is not None and task.state == TaskState.QUEUED and task.attempts == 0
    assert (task.lease_token, task.lease_expires_at, task.node, task.gpu_index) == (None,) * 4
    assert (task.error, task.started_at, task.not_before) == (None, None, 0.0)
    assert task.wait_reason == "the GPU filled since the plan"
    assert [t.id for t in store.queued(now=101.0, limit=10)] == [task_id]
    assert not store.unclaim(task_id, token, reason="again", now=102.0)  # the lease is gone
    # its one attempt is still there to use
    again = store.claim(claim_of(task_id), now=102.0)
    assert again is not None and again.attempts == 1 and again.wait_reason is None
    assert [(e.state, e.detail) for e in store.history(task_id)][1:] == [
        (TaskState.RUNNING, "attempt 1 on node-a gpu 0"),
        (TaskState.QUEUED, "claim given back: the GPU filled since the plan"),
        (TaskState.RUNNING, "attempt 1 on node-a gpu 0"),
    ]


def test_unclaim_of_a_retried_task_keeps_the_attempts_before(store: TaskStore) -> None:
    task_id, token = running(store)
    store.fail(task_id, token, "CUDA out of memory", retry_at=101.0, now=101.0)
    second = store.claim(claim_of(task_id), now=102.0)
    assert second is not None and second.lease_token is not None
    back = store.unclaim(task_id, second.lease_token, reason="full", now=103.0)
    assert back is not None and back.state == TaskState.QUEUED and back.attempts == 1
    assert back.error == "CUDA out of memory"  # the last real failure stays visible


def test_unclaim_of_a_task_asked_to_cancel_cancels_it(store: TaskStore) -> None:
    task_id, token = running(store)
    store.cancel(task_id, now=101.0)
    back = store.unclaim(task_id, token, reason="full", now=102.0)
    assert back is not None and back.state == TaskState.CANCELLED and back.attempts == 0
    assert back.finished_at == 102.0 and back.lease_token is None
    assert store.history(task_id)[-1].detail == "cancelled before it started"
    assert store.unclaim(task_id, token, reason="full", now=103.0) is None


# --- cancellation and waiting ---------------------------------------------------------------
def test_cancel_in_each_state(store: TaskStore) -> None:
    queued, _ = store.add(new_task(), now=1.0)
    cancelled = store.cancel(queued.id, now=2.0)
    assert cancelled is not None and cancelled.state == TaskState.CANCELLED
    assert cancelled.finished_at == 2.0
    task_id, token = running(store)
    asked = store.cancel(task_id, now=101.0)
    assert asked is not None and asked.state == TaskState.RUNNING and asked.cancel_requested
    assert store.cancel(task_id, now=101.5) == asked
    assert store.finish_cancel(task_id, token, now=102.0)
    final = store.get(task_id)
    assert final is not None and final.state == TaskState.CANCELLED and final.lease_token is None
    assert store.cancel(task_id, now=103.0) == final
    assert store.cancel("no-such-task", now=103.0) is None
    details = [e.detail for e in store.history(task_id)]
    assert details.count("cancel requested") == 1


def test_a_task_asked_to_cancel_is_not_retried(store: TaskStore) -> None:
    task_id, token = running(store)
    store.cancel(task_id, now=101.0)
    outcome = store.fail(task_id, token, "killed", retry_at=102.0, now=101.5)
    assert outcome is not None and outcome.state == TaskState.FAILED
    assert store.get(task_id).state == TaskState.FAILED  # type: ignore[union-attr]


def test_cancels_requested_names_the_running_tasks_of_one_node(factory: StoreFactory) -> None:
    """One query tells a node which of its running tasks a client cancelled (on any node)."""
    store, other_node = factory(), factory()
    asked, _ = running(store)
    running(store)  # not asked
    queued, _ = store.add(new_task(), now=100.0)
    elsewhere, _ = store.add(new_task(), now=100.0)
    store.claim(Claim(elsewhere.id, "node-b", 0, "GPU-0", 1, 30.0), now=100.0)
    assert store.cancels_requested(node="node-a") == set()
    for task_id in (asked, queued.id, elsewhere.id):
        other_node.cancel(task_id, now=101.0)
    assert store.cancels_requested(node="node-a") == {asked}
    assert store.cancels_requested(node="node-b") == {elsewhere.id}
    assert store.cancels_requested(node="node-c") == set()


def test_wait_reasons_touch_only_queued_tasks(store: TaskStore) -> None:
    queued, _ = store.add(new_task(), now=1.0)
    task_id, _ = running(store)
    store.set_wait_reasons({queued.id: "waiting for memory", task_id: "x", "no-such-task": "y"})
    assert store.get(queued.id).wait_reason == "waiting for memory"  # type: ignore[union-attr]
    assert store.get(task_id).wait_reason is None  # type: ignore[union-attr]
    store.set_wait_reasons({queued.id: None})
    assert store.get(queued.id).wait_reason is None  # type: ignore[union-attr]
    assert len(store.history(queued.id)) == 1


def test_fail_queued(store: TaskStore) -> None:
    queued, _ = store.add(new_task(), now=1.0)
    assert store.fail_queued(queued.id, "needs 90 GiB; the largest GPU has 80", now=2.0)
    failed = store.get(queued.id)
    assert failed is not None and failed.state == TaskState.FAILED and failed.finished_at == 2.0
    assert not store.fail_queued(queued.id, "again", now=3.0)
    assert store.history(queued.id)[-1].detail == "needs 90 GiB; the largest GPU has 80"


# --- recovery and pruning -------------------------------------------------------------------
def test_recover_expired_requeues_or_fails(store: TaskStore) -> None:
    requeue, _ = running(store, now=100.0)
    exhausted, _ = running(store, now=100.0, max_attempts=1)
    fresh, _ = running(store, now=125.0)
    asked, _ = running(store, now=100.0)
    store.cancel(asked, now=101.0)
    recovered = store.recover_expired(now=131.0)
    assert sorted(recovered) == sorted([requeue, exhausted, asked])
    back = store.get(requeue)
    assert back is not None and back.state == TaskState.QUEUED and back.lease_token is None
    assert store.history(requeue)[-1].detail == "lease expired"
    dead = store.get(exhausted)
    assert dead is not None and dead.state == TaskState.FAILED and dead.finished_at == 131.0
    assert dead.error == "lease expired on attempt 1 of 1: no attempts left"
    assert store.get(asked).state == TaskState.CANCELLED  # type: ignore[union-attr]
    assert store.get(fresh).state == TaskState.RUNNING  # type: ignore[union-attr]
    assert store.recover_expired(now=131.0) == []


def test_recovery_never_touches_a_finished_task(store: TaskStore) -> None:
    """River's rescuer bug: a job that completed after its lease ran out was rescued anyway."""
    task_id, token = running(store, now=100.0)
    assert store.complete(task_id, token, TRANSCRIPT, peak_bytes=5, now=200.0)
    assert store.recover_expired(now=300.0) == []
    done = store.get(task_id)
    assert done is not None and done.state == TaskState.COMPLETED and done.attempts == 1
    assert store.result(task_id) == TRANSCRIPT


def test_stale_lease_after_recovery_changes_nothing(store: TaskStore) -> None:
    task_id, old_token = running(store, now=100.0)
    assert store.recover_expired(now=200.0) == [task_id]
    new = store.claim(claim_of(task_id, gpu=3), now=201.0)
    assert new is not None and new.lease_token is not None
    assert not store.complete(task_id, old_token, TRANSCRIPT, peak_bytes=1, now=202.0)
    assert not store.fail(task_id, old_token, "late", retry_at=None, now=202.0)
    assert store.renew([(task_id, old_token)], lease_seconds=30.0, now=202.0) == set()
    assert store.get(task_id) == new
    assert store.complete(task_id, new.lease_token, TRANSCRIPT, peak_bytes=1, now=203.0)


def test_recovery_racing_completion_keeps_one_outcome(factory: StoreFactory) -> None:
    stores = [factory(), factory()]
    leases = [running(stores[0], now=100.0) for _ in range(20)]
    barrier = threading.Barrier(2)

    def complete_all() -> set[str]:
        barrier.wait()
        return {
            task_id
            for task_id, token in leases
            if stores[0].complete(task_id, token, TRANSCRIPT, peak_bytes=1, now=150.0)
        }

    def recover() -> set[str]:
        barrier.wait()
        return {i for _ in range(5) for i in stores[1].recover_expired(now=150.0)}

    with ThreadPoolExecutor(2) as pool:
        completed_f, recovered_f = pool.submit(complete_all), pool.submit(recover)
        completed, recovered = completed_f.result(), recovered_f.result()
    assert completed | recovered == {task_id for task_id, _ in leases}
    assert not completed & recovered
    for task_id in completed:
        assert stores[1].get(task_id).state == TaskState.COMPLETED  # type: ignore[union-attr]
    for task_id in recovered:
        assert stores[1].get(task_id).state == TaskState.QUEUED  # type: ignore[union-attr]
        assert stores[1].result(task_id) is None


def test_prune_deletes_old_final_tasks_with_their_rows(store: TaskStore) -> None:
    old_done, token = running(store, now=100.0)
    store.complete(old_done, token, TRANSCRIPT, peak_bytes=None, now=110.0)
    old_cancelled, _ = store.add(new_task("key-1"), now=100.0)
    store.cancel(old_cancelled.id, now=111.0)
    recent_done, token = running(store, now=100.0)
    store.complete(recent_done, token, TRANSCRIPT, peak_bytes=None, now=500.0)
    still_running, _ = running(store, now=100.0)
    still_queued, _ = store.add(new_task(), now=100.0)
    pruned = store.prune(finished_before=200.0)
    assert sorted(t.id for t in pruned) == sorted([old_done, old_cancelled.id])
    assert all(store.get(t.id) is None for t in pruned)
    assert store.result(old_done) is None and store.history(old_done) == []
    assert store.result(recent_done) == TRANSCRIPT
    assert {t.id for t in store.list_tasks()} == {recent_done, still_running, still_queued.id}
    again, created = store.add(new_task("key-1"), now=600.0)
    assert created and again.id != old_cancelled.id


# --- calibration --------------------------------------------------------------------------
def profile_key(model: str) -> ProfileKey:
    return ProfileKey("NVIDIA H100 80GB HBM3", "faster-whisper", model, "float16", 1, 5)


def sample(model: str, at: float, working: int) -> CalibrationSample:
    return CalibrationSample(profile_key(model), working, 1_500_000, None, at, estimate_bytes=9)


def test_samples_newest_first_per_key(store: TaskStore) -> None:
    for i, at in enumerate([5.0, 1.0, 9.0, 3.0]):
        store.add_sample(sample("small", at, 100 + i))
    store.add_sample(sample("tiny", 2.0, 50))
    newest = store.samples(profile_key("small"), limit=3)
    assert [s.measured_at for s in newest] == [9.0, 5.0, 3.0]
    assert newest[0] == sample("small", 9.0, 102)
    assert store.samples(profile_key("large-v3"), limit=3) == []
    every = list(store.all_samples(per_key_limit=2))
    assert sorted((s.key.model, s.measured_at) for s in every) == [
        ("small", 5.0), ("small", 9.0), ("tiny", 2.0)
    ]  # fmt: skip


# --- differential: random histories mean the same on every store ----------------------------
OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["add", "claim", "complete", "fail", "retry", "cancel", "finish_cancel",
             "fail_queued", "recover", "prune", "progress", "stale", "unclaim"]
        ),
        st.integers(min_value=0, max_value=5),
        st.sampled_from([None, "a", "b"]),
        st.integers(min_value=1, max_value=3),
    ),
    max_size=30,
)  # fmt: skip


class Replay:
    """Applies one operation to a store, remembering its ids and lease tokens."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self.ids: list[str] = []
        self.tokens: dict[str, str] = {}

    def apply(self, op: str, pick: int, key: str | None, attempts: int, now: float) -> object:
        s = self.store
        if op == "add":
            task, created = s.add(new_task(key, max_attempts=attempts), now=now)
            if created:
                self.ids.append(task.id)
            return (self.ids.index(task.id), created)
        if op == "recover":
            return sorted(self.ids.index(i) for i in s.recover_expired(now=now))
        if op == "prune":
            return sorted(self.ids.index(t.id) for t in s.prune(finished_before=now - 5))
        if not self.ids:
            return None
        task_id = self.ids[pick % len(self.ids)]
        token = self.tokens.get(task_id, "none")
        if op == "claim":
            claimed = s.claim(claim_of(task_id, lease=float(attempts * 3)), now=now)
            if claimed is not None and claimed.lease_token is not None:
                self.tokens[task_id] = claimed.lease_token
            return claimed is not None
        return self._token_op(op, task_id, token, now)

    def _token_op(self, op: str, task_id: str, token: str, now: float) -> object:
        s = self.store
        if op == "complete":
            return s.complete(task_id, token, TRANSCRIPT, peak_bytes=7, now=now)
        if op in ("fail", "retry"):
            retry_at = now + 2 if op == "retry" else None
            outcome = s.fail(task_id, token, op, retry_at=retry_at, now=now)
            return None if outcome is None else (outcome.state, outcome.attempts, outcome.error)
        if op == "cancel":
            task = s.cancel(task_id, now=now)
            return None if task is None else task.state
        if op == "finish_cancel":
            return s.finish_cancel(task_id, token, now=now)
        if op == "unclaim":
            outcome = s.unclaim(task_id, token, reason=op, now=now)
            return None if outcome is None else (outcome.state, outcome.attempts)
        if op == "fail_queued":
            return s.fail_queued(task_id, "never fits", now=now)
        if op == "progress":
            return s.set_progress(task_id, token, 0.5)
        return s.complete(task_id, "stale", TRANSCRIPT, peak_bytes=1, now=now)

    def snapshot(self) -> tuple[list[object], QueueCounts, list[str]]:
        view: list[object] = []
        for task_id in self.ids:
            task = self.store.get(task_id)
            if task is None:
                view.append(None)
                continue
            fields = (task.state, task.attempts, task.error, task.progress, task.not_before,
                      task.finished_at, task.cancel_requested, task.node, task.lease_expires_at,
                      task.lease_token is not None, task.memory_peak_bytes)  # fmt: skip
            events = [(e.at, e.state, e.detail) for e in self.store.history(task_id)]
            view.append((fields, events, self.store.result(task_id) is not None))
        queued = [t.id for t in self.store.queued(now=1e9, limit=50)]
        return view, self.store.counts(), queued


def _replay_matches_memory(other: TaskStore, ops: list[tuple[str, int, str | None, int]]) -> None:
    mine, theirs = Replay(InMemoryStore()), Replay(other)
    for step, (op, pick, key, attempts) in enumerate(ops):
        now = 100.0 + step
        assert mine.apply(op, pick, key, attempts, now) == theirs.apply(
            op, pick, key, attempts, now
        )
        ours, other_view = mine.snapshot(), theirs.snapshot()
        assert ours[:2] == other_view[:2], f"after step {step}: {op}"
        assert [mine.ids.index(i) for i in ours[2]] == [theirs.ids.index(i) for i in other_view[2]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_sqlite_replays_random_histories_like_memory(
    ops: list[tuple[str, int, str | None, int]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteStore(f"{directory}/replay.db")
        try:
            _replay_matches_memory(store, ops)
        finally:
            store.close()


# --- nodes ----------------------------------------------------------------------------------
def node_record(name: str, at: float, lease: float = 30.0, role: str = "worker") -> NodeRecord:
    gpu = {"index": 0, "uuid": f"GPU-{name}", "name": "NVIDIA H100 80GB HBM3", "kind": "cuda"}
    return NodeRecord(name, role, 1.0, at, at + lease, (gpu,))


def test_nodes_are_live_until_their_lease_ends(factory: StoreFactory) -> None:
    a, b = factory(), factory()
    a.heartbeat_node(node_record("node-a", 100.0))
    b.heartbeat_node(node_record("node-b", 110.0, role="api"))
    assert [n.name for n in a.nodes(now=120.0)] == ["node-a", "node-b"]
    assert b.nodes(now=120.0)[0] == node_record("node-a", 100.0)
    assert [n.name for n in a.nodes(now=135.0)] == ["node-b"]  # a's lease ended at 130
    a.heartbeat_node(node_record("node-a", 138.0))  # a heartbeat brings it back, renewed
    assert [(n.name, n.heartbeat_at) for n in b.nodes(now=139.0)] == [
        ("node-a", 138.0),
        ("node-b", 110.0),
    ]
    b.remove_node("node-b")
    assert [n.name for n in a.nodes(now=139.0)] == ["node-a"]


def test_prune_forgets_nodes_long_gone(store: TaskStore) -> None:
    store.heartbeat_node(node_record("old", 100.0))
    store.heartbeat_node(node_record("new", 1000.0))
    store.prune(finished_before=500.0)
    assert [n.name for n in store.nodes(now=0.0)] == ["new"]


# --- a scheduling pass's window ---------------------------------------------------------------
def test_claim_window_takes_the_oldest_of_each_priority_and_claims_what_decide_chose(
    store: TaskStore,
) -> None:
    normal = [store.add(new_task(), now=float(i))[0].id for i in range(5)]
    high = store.add(new_task(priority=Priority.HIGH), now=10.0)[0].id
    seen: list[list[str]] = []

    def decide(window: list[Task]) -> list[Claim]:
        seen.append([t.id for t in window])
        return [claim_of(window[0].id), claim_of(window[-1].id)]

    window, claimed = store.claim_window(now=100.0, limit=3, decide=decide)
    by_priority = sorted(window, key=lambda t: (t.priority, t.created_at))  # lower runs sooner
    assert [t.id for t in by_priority] == [high, *normal[:3]]
    assert seen == [[t.id for t in window]]
    assert sorted(t.id for t in claimed) == sorted({window[0].id, window[-1].id})
    assert all(t.state is TaskState.RUNNING and t.lease_token for t in claimed)
    assert store.count_queued() == 4
    empty, none = store.claim_window(now=100.0, limit=3, decide=lambda w: [])
    assert none == [] and len(empty) == 3  # four normal tasks left; the limit is per priority


def test_passes_at_once_never_plan_what_the_other_claims(
    factory: StoreFactory, request: pytest.FixtureRequest
) -> None:
    """While one pass holds its window, another pass gets other tasks (PostgreSQL: SKIP
    LOCKED) or waits for the first to commit (SQLite, memory): never a task being claimed."""
    first, second = factory(), factory()
    ids = [first.add(new_task(), now=float(i))[0].id for i in range(8)]
    holding = threading.Event()
    release = threading.Event()
    windows: dict[str, list[str]] = {}

    def slow(window: list[Task]) -> list[Claim]:
        windows["first"] = [t.id for t in window]
        holding.set()
        release.wait(0.5)
        return [claim_of(t.id) for t in window]

    def fast(window: list[Task]) -> list[Claim]:
        windows["second"] = [t.id for t in window]
        return [claim_of(t.id) for t in window]

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(first.claim_window, now=100.0, limit=3, decide=slow)
        assert holding.wait(5.0)
        b = pool.submit(second.claim_window, now=100.0, limit=3, decide=fast)
        _, claimed_a = a.result(10.0)
        release.set()
        _, claimed_b = b.result(10.0)
    assert windows["first"] == ids[:3] and not set(windows["second"]) & set(windows["first"])
    assert {t.id for t in claimed_a} | {t.id for t in claimed_b} == set(ids[:6])
    if "postgres" in request.node.name:
        assert windows["second"] == ids[3:6]  # taken at once, not after the first committed
