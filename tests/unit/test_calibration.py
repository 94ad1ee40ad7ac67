import math
import statistics
import threading

from hypothesis import given
from hypothesis import strategies as st

from gpuscribe.memory.batch import Workspace
from gpuscribe.memory.calibration import (
    OCCUPANCY_BEAM,
    CalibrationBook,
    occupancy_sample,
    window_estimate,
)
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


# --- occupancy samples of a batched model -----------------------------------------------------
LARGE = ModelKey("transformers", "large-v3", "float16")


def occupied(
    rows: int, workspace: int, *, at: float = 0.0, model: ModelKey = LARGE
) -> CalibrationSample:
    return occupancy_sample(
        "NVIDIA H200", model, rows_in_use=rows, workspace_bytes=workspace,
        weights_bytes=3_000, context_bytes=700, measured_at=at,
    )  # fmt: skip


def test_occupancy_samples_are_marked_by_beam_zero() -> None:
    s = occupied(64, 5_000)
    assert (s.key.batch_size, s.key.beam_size) == (64, OCCUPANCY_BEAM)
    assert s.key.model_key == LARGE and s.working_bytes == 5_000


def test_occupancy_samples_fit_the_batch_workspace_and_stay_out_of_task_windows() -> None:
    book = CalibrationBook(5, 1.2)
    assert book.batch_workspace("NVIDIA H200", LARGE) is None
    book.add(occupied(16, 1_160))
    assert book.batch_workspace("NVIDIA H200", LARGE) is None  # one occupancy: no slope
    book.load([occupied(64, 1_640, at=1.0), occupied(256, 3_560, at=2.0)])
    found = book.batch_workspace("NVIDIA H200", LARGE)
    assert found == (Workspace(1_000, 10), 3)
    assert book.rows() == []  # not a task's key: /v1/calibration lists tasks' windows only
    assert book.weights("NVIDIA H200", LARGE) == (3_000, 3)
    assert book.context("NVIDIA H200", LARGE) == (700, 3)
    assert book.batch_workspace("NVIDIA H100 80GB HBM3", LARGE) is None


def test_a_tasks_model_names_find_the_calibrated_batch() -> None:
    book = CalibrationBook(5, 1.2)
    book.load([occupied(16, 1_160), occupied(64, 1_640)])
    for asked in ("large", "large-v3"):
        for compute_type in ("default", "float16"):
            key = ModelKey("transformers", asked, compute_type)
            assert book.batch_workspace("NVIDIA H200", key) is not None
    assert book.batch_workspace("NVIDIA H200", ModelKey("transformers", "large", "float32")) is None


def test_each_occupancy_keeps_its_newest_samples() -> None:
    book = CalibrationBook(2, 1.2)
    book.load(
        [occupied(16, 9_000, at=0.0), occupied(16, 1_160, at=1.0), occupied(16, 1_160, at=2.0)]
    )
    book.add(occupied(64, 1_640, at=3.0))
    assert book.batch_workspace("NVIDIA H200", LARGE) == (Workspace(1_000, 10), 3)
