"""batched/alignment.py: dynamic time warping (against openai-whisper's `dtw_cpu`, written out
here, and a brute force over all paths), the median filter, and the matrix DTW runs on."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from gpuscribe.workers.engines.batched.alignment import (
    alignment_matrix,
    median_filter,
    negative_dtw,
    softmax,
)

Array = npt.NDArray[np.float64]


def whisper_dtw(x: Array) -> list[tuple[int, int]]:
    """openai-whisper's `dtw_cpu` and `backtrace` (timing.py, MIT), on the cost matrix `x`."""
    n, m = x.shape
    cost = np.ones((n + 1, m + 1), dtype=np.float32) * np.inf
    trace = -np.ones((n + 1, m + 1), dtype=np.float32)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if trace[i, j] == 0:
            i, j = i - 1, j - 1
        elif trace[i, j] == 1:
            i -= 1
        else:
            j -= 1
    return path[::-1]


def all_paths(n: int, m: int) -> list[list[tuple[int, int]]]:
    """Every monotonic path from (0, 0) to (n-1, m-1) in steps right, down or diagonal."""
    if (n, m) == (1, 1):
        return [[(0, 0)]]
    paths = []
    for di, dj in ((1, 1), (1, 0), (0, 1)):
        i, j = n - di, m - dj
        if i >= 1 and j >= 1:
            paths += [[*p, (n - 1, m - 1)] for p in all_paths(i, j)]
    return paths


def _cost(matrix: Array, path: list[tuple[int, int]]) -> float:
    return float(sum(-matrix[i, j] for i, j in path))


def _check_shape(path: list[tuple[int, int]], n: int, m: int) -> None:
    assert path[0] == (0, 0)
    assert path[-1] == (n - 1, m - 1)
    for (i0, j0), (i1, j1) in itertools.pairwise(path):
        assert (i1 - i0, j1 - j0) in ((1, 1), (1, 0), (0, 1))


@pytest.mark.parametrize(("n", "m"), [(1, 1), (1, 5), (5, 1), (3, 4), (4, 3), (7, 30), (30, 7)])
def test_path_is_monotonic_from_the_origin_to_the_corner(n: int, m: int) -> None:
    matrix = np.random.default_rng(n * 100 + m).normal(size=(n, m))
    path = negative_dtw(matrix)
    _check_shape(path, n, m)
    assert path == whisper_dtw(-matrix)


@pytest.mark.parametrize("seed", range(6))
def test_path_has_the_least_cost_of_all_paths(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(2, 5)), int(rng.integers(2, 6))
    matrix = rng.normal(size=(n, m))
    path = negative_dtw(matrix)
    best = min(_cost(matrix, p) for p in all_paths(n, m))
    assert _cost(matrix, path) == pytest.approx(best)


def test_a_clear_diagonal_is_followed() -> None:
    matrix = -np.ones((3, 6))  # every cell off the word's frames costs
    for token, frames in enumerate(((0, 1), (2, 3), (4, 5))):
        matrix[token, list(frames)] = 1.0
    assert negative_dtw(matrix) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]


def test_ties_are_broken_as_whisper_does() -> None:
    """Diagonal only when strictly cheapest, then up, else left: all ties go left first."""
    assert negative_dtw(np.zeros((3, 4))) == [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (2, 3)]
    rng = np.random.default_rng(7)
    for _ in range(20):  # many exact ties: small integers
        shape = (int(rng.integers(1, 7)), int(rng.integers(1, 9)))
        matrix: Array = rng.integers(0, 2, size=shape).astype(np.float64)
        assert negative_dtw(matrix) == whisper_dtw(-matrix)


def _direct_median(x: Array, width: int) -> Array:
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        for t in range(x.shape[-1]):
            out[(*index, t)] = np.median(padded[(*index, slice(t, t + width))])
    return out


@pytest.mark.parametrize(("shape", "width"), [((2, 3, 20), 7), ((5, 9), 3), ((4,), 5), ((3, 4), 7)])
def test_median_filter_matches_a_direct_median(shape: tuple[int, ...], width: int) -> None:
    x = np.random.default_rng(len(shape) * 10 + width).normal(size=shape)
    assert np.allclose(median_filter(x, width), _direct_median(x, width))


def test_median_filter_leaves_narrow_inputs_and_widths_alone() -> None:
    x = np.random.default_rng(1).normal(size=(2, 3))
    assert median_filter(x, 1) is x
    assert median_filter(x, 7) is x  # 3 frames: no room to reflect 3 on each side
    assert np.array_equal(median_filter(x, 5), _direct_median(x, 5))


def test_softmax_rows_sum_to_one() -> None:
    x = np.random.default_rng(2).normal(size=(3, 5)) * 50
    assert np.allclose(softmax(x).sum(-1), 1.0)
    assert np.allclose(softmax(x), np.exp(x) / np.exp(x).sum(-1, keepdims=True))


def test_alignment_matrix_crops_to_the_audio_and_averages_heads() -> None:
    heads, tokens, frames = 3, 5, 40
    scores = np.random.default_rng(3).normal(size=(heads, tokens, frames))
    matrix = alignment_matrix(scores, num_frames=30, median_width=7)
    assert matrix.shape == (tokens, 15)  # two mel frames per encoder frame
    assert matrix.dtype == np.float64
    assert alignment_matrix(scores, num_frames=500, median_width=7).shape == (tokens, frames)
    assert alignment_matrix(scores, num_frames=1, median_width=7).shape == (tokens, 1)


def test_alignment_matrix_is_standardised_over_tokens() -> None:
    heads, tokens, frames = 2, 6, 12
    scores = np.random.default_rng(4).normal(size=(heads, tokens, frames))
    matrix = alignment_matrix(scores, num_frames=2 * frames, median_width=1)
    weights = softmax(scores)
    expected = ((weights - weights.mean(1, keepdims=True)) / weights.std(1, keepdims=True)).mean(0)
    assert np.allclose(matrix, expected)
    assert np.allclose(matrix.mean(0), 0.0)
    filtered = alignment_matrix(scores, num_frames=2 * frames, median_width=5)
    standard = (weights - weights.mean(1, keepdims=True)) / weights.std(1, keepdims=True)
    assert np.allclose(filtered, _direct_median(standard, 5).mean(0))
