from gpuscribe.memory.ledger import DeviceLedger
from gpuscribe.memory.types import GIB, EstimateSource, MemoryEstimate, ModelKey
from gpuscribe.scheduling.placement import LeastAdmitted, wait_reason

MODEL = ModelKey("sim", "x", "default")


def need(gib: float) -> MemoryEstimate:
    return MemoryEstimate(0, 0, int(gib * GIB), EstimateSource.PRIOR)


def ledger(index: int, admitted_gib: float = 0, total_gib: float = 10) -> DeviceLedger:
    """A planning ledger with `admitted_gib` already charged."""
    made = DeviceLedger(
        f"g{index}", index, int(total_gib * GIB), cap_fraction=1.0, reserve_bytes=0, max_tasks=5
    )
    if admitted_gib:
        made.admit("before", need(admitted_gib), MODEL, foreign_bytes=0)
    return made


def admit(ledgers: list[DeviceLedger], gib: float) -> tuple[int, object] | str:
    chosen = LeastAdmitted(ledgers, [0] * len(ledgers), {}).admit("t", MODEL, lambda _: need(gib))
    return chosen if isinstance(chosen, str) else (ledgers[chosen[0]].index, chosen[1])


def test_least_admitted_fitting_device_wins() -> None:
    ledgers = [ledger(0, 5), ledger(1, 2), ledger(2, 0, total_gib=1)]  # g2 is too small
    chosen = admit(ledgers, 3)
    assert not isinstance(chosen, str) and chosen[0] == 1
    assert ledgers[1].running_tasks == 2  # charged to the planning ledger


def test_ties_go_to_the_lowest_index() -> None:
    chosen = admit([ledger(3, 2), ledger(1, 2), ledger(2, 2)], 1)
    assert not isinstance(chosen, str) and chosen[0] == 1


def test_nothing_fits_means_no_device_never_gpu_0() -> None:
    ledgers = [ledger(0, 9), ledger(1, 9)]
    assert admit(ledgers, 3) == (
        "GPU 0: needs 3.0 GiB, 1.0 GiB available under the 100% cap; "
        "GPU 1: needs 3.0 GiB, 1.0 GiB available under the 100% cap"
    )
    assert [lg.running_tasks for lg in ledgers] == [1, 1]
    assert admit([], 1) == "no device"


def test_wait_reason_joins_device_reasons_in_order() -> None:
    reasons = {1: "GPU 1: 5 of 5 tasks running", 0: "GPU 0: needs 3.0 GiB"}
    assert wait_reason(reasons) == "GPU 0: needs 3.0 GiB; GPU 1: 5 of 5 tasks running"
    assert wait_reason({}) == "no device"
