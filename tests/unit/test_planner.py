from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuscribe.domain import Priority, Task, TaskState, TranscriptionOptions
from gpuscribe.memory.ledger import DeviceLedger
from gpuscribe.memory.types import GIB, EstimateSource, MemoryEstimate, ModelKey
from gpuscribe.scheduling.planner import DeviceState, Plan, plan
from gpuscribe.telemetry.base import DeviceKind

# Task memory in these tests: the model name is "<working GiB>" with no weights nor context.


def task(
    tid: str,
    gib: float,
    priority: Priority = Priority.NORMAL,
    created_at: float = 0.0,
    **kw: object,
) -> Task:
    options = TranscriptionOptions(model=str(gib), engine="sim")
    return Task(tid, TaskState.QUEUED, priority, options, "a.wav", 10.0, "wav", created_at, **kw)  # type: ignore[arg-type]


def estimate_for(t: Task, device: DeviceState) -> MemoryEstimate:
    return MemoryEstimate(0, 0, int(float(t.options.model) * GIB), EstimateSource.PRIOR)


def device(
    index: int,
    total_gib: float = 10,
    *,
    healthy: bool = True,
    max_tasks: int = 5,
    foreign_gib: float = 0,
    name: str = "Sim",
) -> DeviceState:
    ledger = DeviceLedger(
        f"GPU-{index}",
        index,
        int(total_gib * GIB),
        cap_fraction=1.0,
        reserve_bytes=0,
        max_tasks=max_tasks,
    )
    return DeviceState(ledger, name, DeviceKind.SIMULATED, int(foreign_gib * GIB), healthy)


def run(
    queue: list[Task], devices: list[DeviceState], now: float = 0.0, starvation: float = 300.0
) -> Plan:
    return plan(
        queue, devices, estimate_for, now=now, aging_seconds=120, starvation_seconds=starvation
    )


def placed(p: Plan) -> dict[str, int]:
    return {pl.task_id: pl.device_index for pl in p.placements}


def charge(p: Plan, devices: list[DeviceState]) -> None:
    by_uuid = {d.ledger.uuid: d for d in devices}
    for pl in p.placements:
        d = by_uuid[pl.device_uuid]
        d.ledger.admit(pl.task_id, pl.estimate, pl.model, foreign_bytes=d.foreign_bytes)


def test_least_admitted_device_and_later_placements_see_earlier_ones() -> None:
    devices = [device(0), device(1)]
    devices[0].ledger.admit(
        "old",
        estimate_for(task("x", 1), devices[0]),
        ModelKey("sim", "1", "default"),
        foreign_bytes=0,
    )
    p = run(
        [task("a", 4, created_at=1), task("b", 4, created_at=2), task("c", 4, created_at=3)],
        devices,
    )
    assert placed(p) == {"a": 1, "b": 0, "c": 1}
    # the plan charged planning copies: the ledgers it was given are as they were
    assert devices[1].ledger.running_tasks == 0
    assert devices[0].ledger.admitted_bytes == 1 * GIB
    charge(p, devices)  # as the scheduler does for what it claimed
    assert devices[1].ledger.running_tasks == 2
    assert devices[0].ledger.admitted_bytes == 5 * GIB


def test_priority_order_decides_who_gets_the_room() -> None:
    p = run([task("low", 6, Priority.LOW), task("high", 6, Priority.HIGH)], [device(0)])
    assert placed(p) == {"high": 0}
    assert p.waiting["low"] == "GPU 0: needs 6.0 GiB, 4.0 GiB available under the 100% cap"


def test_unhealthy_devices_are_skipped() -> None:
    p = run([task("a", 1)], [device(0, healthy=False), device(1, 5)])
    assert placed(p) == {"a": 1}
    p = run([task("b", 1)], [device(0, healthy=False)])
    assert p.waiting == {"b": "no healthy device"}


def test_a_device_in_a_memory_warning_admits_nothing_but_still_counts_for_what_fits() -> None:
    warned = device(0, 40)
    warned.warning = "memory use passed the warning level"
    p = run([task("a", 1), task("big", 30)], [warned, device(1, 10)])
    assert placed(p) == {"a": 1}
    assert warned.ledger.running_tasks == 0
    # 30 GiB could fit on GPU 0 once it recovers: it waits, it is not impossible
    assert p.waiting == {"big": "GPU 0: memory warning, memory use passed the warning level; "
                         "GPU 1: needs 30.0 GiB, 9.0 GiB available under the 100% cap"}  # fmt: skip
    assert p.impossible == {}


def test_backfill_smaller_tasks_use_room_a_larger_one_cannot() -> None:
    p = run(
        [task("big", 8, Priority.HIGH), task("small", 2, Priority.LOW)], [device(0, foreign_gib=5)]
    )
    assert placed(p) == {"small": 0}
    assert "other processes hold 5.0 GiB" in p.waiting["big"]


def test_starving_task_stops_backfill_behind_it() -> None:
    devices = [device(0, foreign_gib=5)]
    queue = [
        task("big", 8, Priority.HIGH, created_at=0),
        task("small", 2, Priority.LOW, created_at=10),
    ]
    p = run(queue, devices, now=301, starvation=300)
    assert placed(p) == {}
    assert "big" in p.waiting
    assert "behind task big" in p.waiting["small"]


def test_tasks_ahead_of_a_starving_one_still_run() -> None:
    queue = [
        task("urgent", 1, Priority.URGENT, created_at=400),
        task("big", 9, Priority.LOW, created_at=100),
        task("small", 1, Priority.LOW, created_at=400),
    ]
    p = run(queue, [device(0, foreign_gib=2), device(1, foreign_gib=2)], now=401, starvation=300)
    assert set(placed(p)) == {"urgent"}
    assert set(p.waiting) == {"big", "small"}


def test_impossible_task_names_need_and_largest_cap() -> None:
    p = run(
        [task("huge", 30), task("ok", 1)],
        [device(0, 10), device(1, 24), device(2, 40, healthy=False)],
    )
    assert placed(p) == {"ok": 0}
    assert p.impossible["huge"] == (
        "needs 30.0 GiB (context + weights + working), more than the largest GPU cap of 24.0 GiB "
        "even with nothing else running"
    )


def test_impossible_tasks_do_not_block_as_starving() -> None:
    p = run([task("huge", 30, created_at=0), task("ok", 1, created_at=0)], [device(0)], now=1000)
    assert placed(p) == {"ok": 0}


def test_max_tasks_closes_a_device_for_the_pass() -> None:
    p = run(
        [task(f"t{i}", 0.1, created_at=i) for i in range(5)],
        [device(0, max_tasks=2), device(1, max_tasks=1)],
    )
    assert Counter(placed(p).values()) == {0: 2, 1: 1}
    assert p.waiting["t3"] == "GPU 0: 2 of 2 tasks running; GPU 1: 1 of 1 tasks running"
    assert p.waiting["t4"] == p.waiting["t3"]


def test_retry_not_before_waits() -> None:
    p = run([task("r", 1, not_before=50.0)], [device(0)], now=20)
    assert p.waiting == {"r": "retrying in 30 s"}


def test_estimates_are_cached_per_shape_and_gpu_model() -> None:
    calls: list[tuple[str, str]] = []

    def counting(t: Task, d: DeviceState) -> MemoryEstimate:
        calls.append((t.id, d.name))
        return estimate_for(t, d)

    queue = [task(f"t{i}", 0.1, created_at=i) for i in range(20)] + [task("retry", 0.1, attempts=1)]
    devices = [
        device(0, 100, max_tasks=50),
        device(1, 100, max_tasks=50, name="Other"),
        device(2, 100, max_tasks=50),
    ]
    p = plan(queue, devices, counting, now=0, aging_seconds=120, starvation_seconds=300)
    assert len(p.placements) == 21
    # one call per GPU model for the shared shape, and the retried task estimated afresh
    assert sorted(calls) == sorted(
        [("retry", "Sim"), ("retry", "Other"), ("t0", "Sim"), ("t0", "Other")]
    )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 9), st.integers(0, 3), st.floats(0, 3)), min_size=1, max_size=6
    ),
    st.floats(0.1, 6),
)
def test_choice_is_the_least_admitted_device_the_task_fits_on(
    loads: list[tuple[float, int, float]], need: float
) -> None:
    devices = []
    for i, (load, running, foreign) in enumerate(loads):
        d = device(i, 12, max_tasks=3, foreign_gib=foreign)
        for j in range(running):
            d.ledger.admit(
                f"pre{j}",
                estimate_for(task("x", load / 3), d),
                ModelKey("sim", "x", "default"),
                foreign_bytes=0,
            )
        devices.append(d)
    new = task("new", need)
    model = ModelKey("sim", new.options.model, "default")
    # the rule, brute force over every device: the least admitted that fits (ties: lowest index)
    fitting = [
        (d.ledger.admitted_bytes, d.ledger.index)
        for d in devices
        if d.ledger.fit(estimate_for(new, d), model, foreign_bytes=d.foreign_bytes).ok
    ]
    p = run([new], devices)
    if not fitting:
        assert p.placements == [] and "new" in p.waiting
    else:
        assert placed(p) == {"new": min(fitting)[1]}


def test_wait_reason_names_at_most_eight_devices() -> None:
    devices = [device(i, 1) for i in range(10)]
    p = run(
        [task(f"half{i}", 0.5, created_at=i) for i in range(10)]
        + [task("big", 0.8, created_at=99)],
        devices,
    )
    assert len(p.placements) == 10
    reason = p.waiting["big"]
    assert reason.startswith("GPU 0: needs 0.8 GiB, 0.5 GiB available")
    assert "GPU 7:" in reason and "GPU 8:" not in reason
    assert reason.endswith("; and 2 more GPUs")
