from gpuscribe.memory.ledger import Fit
from gpuscribe.scheduling.placement import Candidate, choose_device, wait_reason

OK = Fit(True, 10, 100)


def no(reason: str) -> Fit:
    return Fit(False, 10, 0, (), reason)


def test_least_admitted_fitting_device_wins() -> None:
    fits = [Candidate("g0", 0, OK, 50), Candidate("g1", 1, OK, 20), Candidate("g2", 2, no("x"), 0)]
    chosen = choose_device(fits)
    assert chosen is not None and chosen.uuid == "g1"


def test_ties_go_to_the_lowest_index() -> None:
    fits = [Candidate("g3", 3, OK, 20), Candidate("g1", 1, OK, 20), Candidate("g2", 2, OK, 20)]
    chosen = choose_device(fits)
    assert chosen is not None and chosen.index == 1


def test_nothing_fits_means_no_device_never_gpu_0() -> None:
    fits = [Candidate("g0", 0, no("GPU 0: full"), 0), Candidate("g1", 1, no("GPU 1: full"), 0)]
    assert choose_device(fits) is None
    assert choose_device([]) is None


def test_wait_reason_joins_device_reasons_in_order() -> None:
    fits = [
        Candidate("g1", 1, no("GPU 1: 5 of 5 tasks running"), 0),
        Candidate("g2", 2, OK, 0),
        Candidate("g0", 0, no("GPU 0: needs 3.0 GiB"), 0),
    ]
    assert wait_reason(fits) == "GPU 0: needs 3.0 GiB; GPU 1: 5 of 5 tasks running"
    assert wait_reason([]) == "no device"
