import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuscribe.memory.ledger import DeviceLedger, LedgerSnapshot, NotAdmitted
from gpuscribe.memory.types import GIB, EstimateSource, MemoryEstimate, ModelKey

TINY = ModelKey("transformers", "tiny", "float16")
BASE = ModelKey("transformers", "base", "float16")
LARGE = ModelKey("transformers", "large-v3", "float16")


def est(working: float, weights: float = 0.0, context: float = 0.0) -> MemoryEstimate:
    return MemoryEstimate(
        int(context * GIB), int(weights * GIB), int(working * GIB), EstimateSource.PROFILE
    )


def ledger(
    total: float = 10, *, cap: float = 0.9, reserve: float = 0, tasks: int = 5
) -> DeviceLedger:
    return DeviceLedger(
        "GPU-x",
        0,
        int(total * GIB),
        cap_fraction=cap,
        reserve_bytes=int(reserve * GIB),
        max_tasks=tasks,
    )


def recomputed(snap: LedgerSnapshot) -> int:
    return (
        snap.context_bytes
        + sum(m.resident_bytes for m in snap.models)
        + sum(t.working_bytes for t in snap.tasks)
    )


def test_context_once_weights_once_per_model_working_per_task() -> None:
    led = ledger(100)
    led.admit("a", est(1, weights=2, context=1), TINY, foreign_bytes=0)
    led.admit("b", est(1, weights=2, context=1), TINY, foreign_bytes=0)
    led.admit("c", est(0.5, weights=3, context=1), BASE, foreign_bytes=0)
    assert led.admitted_bytes == int((1 + 2 + 1 + 1 + 3 + 0.5) * GIB)
    assert led.running_tasks == 3
    assert recomputed(led.snapshot()) == led.admitted_bytes


def test_need_counts_only_what_is_not_yet_charged() -> None:
    led = ledger(100)
    assert led.fit(est(1, weights=2, context=1), TINY, foreign_bytes=0).need_bytes == 4 * GIB
    led.admit("a", est(1, weights=2, context=1), TINY, foreign_bytes=0)
    assert led.fit(est(1, weights=2, context=1), TINY, foreign_bytes=0).need_bytes == GIB
    assert led.fit(est(1, weights=2, context=1), BASE, foreign_bytes=0).need_bytes == 3 * GIB


def batched(working: float, weights: float, batch: float, rows: int) -> MemoryEstimate:
    return MemoryEstimate(
        0, int(weights * GIB), int(working * GIB), EstimateSource.PRIOR,
        batch_bytes=int(batch * GIB), batch_rows=rows,
    )  # fmt: skip


def test_a_batched_models_batch_is_charged_once_with_its_weights() -> None:
    led = ledger(100)
    assert led.fit(batched(0.1, 3, 80, 256), LARGE, foreign_bytes=0).need_bytes == int(83.1 * GIB)
    led.admit("a", batched(0.1, 3, 80, 256), LARGE, foreign_bytes=0)
    assert led.batch_rows(LARGE) == 256
    for task in ("b", "c", "d", "e"):
        fit = led.admit(task, batched(0.1, 3, 80, 256), LARGE, foreign_bytes=0)
        assert fit.need_bytes == int(0.1 * GIB)
    assert led.admitted_bytes == int(3 * GIB) + int(80 * GIB) + 5 * int(0.1 * GIB)
    snap = led.snapshot()
    assert [(m.batch_bytes, m.batch_rows) for m in snap.models] == [(int(80 * GIB), 256)]
    assert recomputed(snap) == led.admitted_bytes


def test_a_batch_is_never_admitted_past_the_cap() -> None:
    led = ledger(100)
    with pytest.raises(NotAdmitted, match=r"needs 93\.1 GiB, 90\.0 GiB available"):
        led.admit("a", batched(0.1, 3, 90, 256), LARGE, foreign_bytes=0)
    assert led.admitted_bytes == 0 and led.batch_rows(LARGE) == 0


def test_the_first_charge_of_a_batch_names_its_rows() -> None:
    """Later tasks' estimates may name other rows (a context measured since): the resident
    model keeps the rows it was charged with, which its worker allocated."""
    led = ledger(100)
    led.admit("a", batched(0.1, 3, 40, 128), LARGE, foreign_bytes=0)
    led.admit("b", batched(0.1, 3, 50, 160), LARGE, foreign_bytes=0)
    assert led.batch_rows(LARGE) == 128
    assert led.admitted_bytes == int(3 * GIB) + int(40 * GIB) + 2 * int(0.1 * GIB)


def test_measured_weights_keep_the_batch_and_eviction_frees_both() -> None:
    led = ledger(100)
    led.admit("a", batched(0.1, 3, 40, 128), LARGE, foreign_bytes=0)
    led.set_weights(LARGE, int(2.9 * GIB))
    assert led.admitted_bytes == int(2.9 * GIB) + int(40 * GIB) + int(0.1 * GIB)
    led.release("a")
    # an idle batched model is evicted whole for a model that needs its room
    fit = led.admit("b", est(1, weights=50), BASE, foreign_bytes=0)
    assert fit.evict == (LARGE,)
    assert led.admitted_bytes == int(50 * GIB) + int(1 * GIB)
    assert led.batch_rows(LARGE) == 0
    led.release("b")
    assert led.evict(BASE)
    assert led.admitted_bytes == 0


def test_available_is_the_design_formula() -> None:
    led = ledger(10, cap=0.9, reserve=2)  # cap 9, reserve leaves 8: the reserve binds
    assert led.available_bytes() == 8 * GIB
    led.admit("a", est(3), TINY, foreign_bytes=0)
    assert led.available_bytes() == 5 * GIB
    led2 = ledger(10, cap=0.5, reserve=1)
    assert led2.available_bytes() == 5 * GIB
    led3 = ledger(10, cap=0.9, reserve=0)
    led3.admit("a", est(9), TINY, foreign_bytes=0)
    assert led3.available_bytes() == 0


def test_max_tasks_is_enforced() -> None:
    led = ledger(100, tasks=2)
    led.admit("a", est(0.1), TINY, foreign_bytes=0)
    led.admit("b", est(0.1), TINY, foreign_bytes=0)
    assert led.running_tasks == 2
    fit = led.fit(est(0.1), TINY, foreign_bytes=0)
    assert not fit.ok
    assert fit.reason == "GPU 0: 2 of 2 tasks running"
    with pytest.raises(NotAdmitted, match="2 of 2 tasks running"):
        led.admit("c", est(0.1), TINY, foreign_bytes=0)
    led.release("a")
    assert led.running_tasks == 1
    led.admit("c", est(0.1), TINY, foreign_bytes=0)


def test_memory_reason() -> None:
    led = ledger(10)
    led.admit("a", est(8), TINY, foreign_bytes=0)
    fit = led.fit(est(3.2), TINY, foreign_bytes=0)
    assert not fit.ok
    assert fit.reason == "GPU 0: needs 3.2 GiB, 1.0 GiB available under the 90% cap"
    assert fit.available_bytes == 1 * GIB
    with pytest.raises(NotAdmitted) as raised:
        led.admit("b", est(3.2), TINY, foreign_bytes=0)
    assert raised.value.fit == fit
    assert led.running_tasks == 1


def test_reserve_is_named_when_it_binds() -> None:
    led = ledger(10, reserve=4)
    fit = led.fit(est(7), TINY, foreign_bytes=0)
    assert (
        fit.reason
        == "GPU 0: needs 7.0 GiB, 6.0 GiB available under the 90% cap and 4.0 GiB reserve"
    )


def test_foreign_processes_count() -> None:
    led = ledger(40)  # cap 36 GiB
    led.admit("a", est(10), TINY, foreign_bytes=0)
    fit = led.fit(est(6.5), TINY, foreign_bytes=20 * GIB)
    assert not fit.ok
    assert fit.reason == (
        "GPU 0: other processes hold 20.0 GiB; needs 6.5 GiB, 6.0 GiB available under the 90% cap"
    )
    assert fit.available_bytes == 26 * GIB  # the design's figure ignores other processes
    assert led.fit(est(6), TINY, foreign_bytes=20 * GIB).ok
    assert not led.fit(est(6), TINY, foreign_bytes=20 * GIB + 1).ok


def test_idle_models_are_evicted_least_recently_used_first() -> None:
    led = ledger(10)  # limit 9 GiB
    led.admit("a", est(0.5, weights=3), TINY, foreign_bytes=0)
    led.admit("b", est(0.5, weights=3), BASE, foreign_bytes=0)
    led.release("a")
    led.release("b")  # both idle; tiny used least recently
    fit = led.fit(est(1, weights=4), LARGE, foreign_bytes=0)
    assert fit.ok and fit.evict == (TINY,)
    fit = led.fit(est(1, weights=7), LARGE, foreign_bytes=0)
    assert fit.ok and fit.evict == (TINY, BASE)
    assert led.admitted_bytes == 6 * GIB  # fit changes nothing
    admitted = led.admit("c", est(1, weights=7), LARGE, foreign_bytes=0)
    assert admitted.evict == (TINY, BASE)
    assert led.admitted_bytes == 8 * GIB
    assert [m.model for m in led.snapshot().models] == [LARGE]


def test_running_models_are_never_evicted() -> None:
    led = ledger(10)
    led.admit("a", est(0.5, weights=6), TINY, foreign_bytes=0)
    assert not led.fit(est(1, weights=4), LARGE, foreign_bytes=0).ok
    assert led.evict(TINY) is False
    led.release("a")
    assert led.evict(TINY) is True
    assert led.admitted_bytes == 0
    assert led.evict(TINY) is False


def test_release_is_idempotent_and_keeps_the_model() -> None:
    led = ledger(10)
    led.admit("a", est(1, weights=2), TINY, foreign_bytes=0)
    assert led.release("a") is True
    assert led.release("a") is False
    assert led.admitted_bytes == 2 * GIB
    (model,) = led.snapshot().models
    assert (model.model, model.running) == (TINY, 0)


def test_duplicate_task_is_refused() -> None:
    led = ledger(10)
    led.admit("a", est(1), TINY, foreign_bytes=0)
    with pytest.raises(ValueError, match="already admitted"):
        led.admit("a", est(1), TINY, foreign_bytes=0)


def test_measured_context_and_weights_replace_estimates() -> None:
    led = ledger(100)
    led.admit("a", est(1, weights=2, context=1), TINY, foreign_bytes=0)
    led.charge_context(GIB // 2)
    led.set_weights(TINY, 3 * GIB)
    led.set_weights(BASE, GIB)  # loaded without an admission (e.g. preloaded)
    assert led.admitted_bytes == int((1 + 3 + 0.5 + 1) * GIB)
    assert recomputed(led.snapshot()) == led.admitted_bytes


def test_context_charged_by_the_worker_is_not_charged_again() -> None:
    led = ledger(100)
    led.charge_context(GIB)
    fit = led.admit("a", est(1, context=5), TINY, foreign_bytes=0)
    assert fit.need_bytes == GIB
    assert led.admitted_bytes == 2 * GIB


def test_reset() -> None:
    led = ledger(100)
    led.admit("a", est(1, weights=2, context=1), TINY, foreign_bytes=0)
    led.reset()
    snap = led.snapshot()
    assert (snap.admitted_bytes, snap.tasks_running, snap.models, snap.context_bytes) == (
        0,
        0,
        (),
        0,
    )
    assert led.fit(est(1, weights=2, context=1), TINY, foreign_bytes=0).need_bytes == 4 * GIB


def test_snapshot() -> None:
    led = ledger(10, tasks=3)
    led.admit("a", est(1, weights=2), TINY, foreign_bytes=0)
    snap = led.snapshot()
    assert snap.uuid == "GPU-x" and snap.index == 0
    assert snap.cap_bytes == int(10 * GIB * 0.9)
    assert snap.admitted_bytes == 3 * GIB
    assert snap.available_bytes == snap.limit_bytes - 3 * GIB
    assert (snap.tasks_running, snap.max_tasks) == (1, 3)
    assert snap.tasks[0].task_id == "a"


def test_a_planning_copy_starts_equal_and_charges_nothing_here() -> None:
    led = ledger(100)
    led.admit("a", est(1, weights=2, context=1), TINY, foreign_bytes=0)
    led.set_weights(TINY, 2 * GIB)  # loaded
    plan = led.copy()
    assert plan.snapshot() == led.snapshot()
    before = led.snapshot()
    plan.admit("b", est(1, weights=3), BASE, foreign_bytes=0)
    plan.release("a")
    plan.evict(TINY)
    assert led.snapshot() == before


def test_loaded_follows_the_workers_reports() -> None:
    led = ledger(100)
    led.admit("a", est(1, weights=2, context=1), TINY, foreign_bytes=0)
    assert [m.loaded for m in led.snapshot().models] == [False]  # charged, still loading
    led.set_weights(TINY, 2 * GIB)
    assert [m.loaded for m in led.snapshot().models] == [True]
    assert not led.evict(TINY)  # unloaded while in use: charged still, no longer loaded
    assert [(m.model, m.loaded) for m in led.snapshot().models] == [(TINY, False)]


def test_no_deadlock_when_many_threads_allocate() -> None:
    """The design's sketch re-took its own lock in allocate(): its first allocation hung
    (docs/DESIGN.md, What we changed and why)."""
    led = ledger(1000, tasks=10_000)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                led.admit(f"{n}-{i}", est(0.01), TINY, foreign_bytes=0)
                led.available_bytes()
                led.snapshot()
                if i % 2:
                    led.release(f"{n}-{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "allocation deadlocked"
    assert errors == []
    assert led.running_tasks == 8 * 100
    assert recomputed(led.snapshot()) == led.admitted_bytes


Op = tuple[str, int, int, int, int]  # (action, task, model, working GiB, weights GiB)
ops = st.lists(
    st.tuples(
        st.sampled_from(["admit", "admit", "release", "evict"]),
        st.integers(0, 9),
        st.integers(0, 2),
        st.integers(0, 6),
        st.integers(0, 3),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(1, 4), st.integers(0, 4))
def test_random_admit_release_never_exceed_cap_or_max_tasks(
    sequence: list[Op], max_tasks: int, foreign_gib: int
) -> None:
    led = ledger(16, reserve=1, tasks=max_tasks)
    models = (TINY, BASE, LARGE)
    foreign = foreign_gib * GIB
    for action, task, model, working, weights in sequence:
        if action == "admit":
            try:
                led.admit(
                    f"t{task}", est(working, weights, 0.5), models[model], foreign_bytes=foreign
                )
            except (NotAdmitted, ValueError):
                pass
            else:
                assert led.admitted_bytes + foreign <= led.cap_bytes
        elif action == "release":
            led.release(f"t{task}")
        else:
            led.evict(models[model])
        snap = led.snapshot()
        assert snap.admitted_bytes <= snap.limit_bytes
        assert snap.tasks_running <= max_tasks
        assert recomputed(snap) == snap.admitted_bytes
        assert all(m.running >= 0 for m in snap.models)
