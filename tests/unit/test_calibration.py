import math
import statistics
import threading

from hypothesis import given
from hypothesis import strategies as st

from gpuscribe.memory.calibration import CalibrationBook, window_estimate
from gpuscribe.memory.types import CalibrationSample, ModelKey, ProfileKey

KEY = ProfileKey("NVIDIA H200", "transformers", "tiny", "float16", 1, 1)
OTHER = ProfileKey("NVIDIA H200", "transformers", "tiny", "float16", 4, 1)


def sample(
    working: int,
    *,
    key: ProfileKey = KEY,
    at: float = 0.0,
    weights: int | None = None,
    context: int | None = None,
    estimate: int | None = None,
) -> CalibrationSample:
    return CalibrationSample(key, working, weights, context, at, estimate)


def test_no_samples() -> None:
    book = CalibrationBook(5, 1.2)
    assert book.working(KEY) is None
    assert book.weights("NVIDIA H200", KEY.model_key) is None
    assert book.rows() == []


def test_mean_plus_std_times_k() -> None:
    book = CalibrationBook(10, 2.0)
    for w in (100, 200, 300, 400):
        book.add(sample(w))
    mean, std = 250.0, statistics.pstdev([100, 200, 300, 400])
    assert book.working(KEY) == (math.ceil(mean + 2.0 * std), 4)


def test_never_below_the_largest_sample() -> None:
    book = CalibrationBook(10, 0.5)
    for w in (100, 100, 100, 1000):
        book.add(sample(w))
    assert book.working(KEY) == (1000, 4)


@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=30), st.floats(0, 5))
def test_window_rule(values: list[int], k: float) -> None:
    est = window_estimate(values, k)
    assert est >= max(values)
    assert est >= statistics.fmean(values) + statistics.pstdev(values) * k - 1


def test_window_keeps_the_newest() -> None:
    book = CalibrationBook(3, 0.0)
    for w in (10_000, 1, 2, 3):
        book.add(sample(w))
    assert book.working(KEY) == (3, 3)


def test_load_orders_by_time_so_newest_stay() -> None:
    book = CalibrationBook(2, 0.0)
    book.load([sample(5, at=3), sample(999, at=1), sample(4, at=2)])
    assert book.working(KEY) == (5, 2)


def test_keys_are_separate() -> None:
    book = CalibrationBook(5, 0.0)
    book.add(sample(10))
    book.add(sample(99, key=OTHER))
    assert book.working(KEY) == (10, 1)
    assert book.working(OTHER) == (99, 1)


def test_weights_and_context_per_gpu_model_from_samples_that_carry_them() -> None:
    book = CalibrationBook(5, 0.0)
    book.add(sample(1, weights=700, context=50))
    book.add(sample(1, key=OTHER, weights=900))
    book.add(sample(1))
    model = ModelKey("transformers", "tiny", "float16")
    assert book.weights("NVIDIA H200", model) == (900, 2)
    assert book.context("NVIDIA H200", model) == (50, 1)
    assert book.weights("NVIDIA A100", model) is None


def test_rows() -> None:
    book = CalibrationBook(5, 1.0)
    book.add(sample(100, estimate=200))
    book.add(sample(300, estimate=300))
    book.add(sample(200))
    (row,) = book.rows()
    assert row.key == KEY
    assert row.sample_count == 3
    assert row.mean_working_bytes == 200.0
    assert row.max_working_bytes == 300
    assert row.working_estimate_bytes == book.working(KEY)[0]  # type: ignore[index]
    assert row.mean_error_ratio == 1.5


def test_concurrent_adds_and_reads_finish() -> None:
    book = CalibrationBook(50, 1.2)

    def work(n: int) -> None:
        for i in range(300):
            book.add(sample(i + n, weights=i))
            book.working(KEY)
            book.rows()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert book.working(KEY) is not None
    assert book.working(KEY)[1] == 50  # type: ignore[index]
