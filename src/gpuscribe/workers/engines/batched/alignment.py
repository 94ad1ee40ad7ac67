"""Word timing from cross-attention: the alignment heads' weights, normalised and smoothed,
then dynamic time warping from text tokens to encoder frames (Whisper's and CTranslate2's
method). Pure numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
AnyFloats = npt.NDArray[np.floating[Any]]  # float32 from the device, or float64


def softmax(x: Array, axis: int = -1) -> Array:
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    result: Array = e / e.sum(axis=axis, keepdims=True)
    return result


def median_filter(x: Array, width: int) -> Array:
    """Median over a sliding window of `width` along the last axis, reflect-padded (as Whisper
    does); widths below 2 or wider than the input leave it unchanged."""
    if width < 2 or x.shape[-1] <= width // 2:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    result: Array = np.median(windows, axis=-1)
    return result


def alignment_matrix(scores: AnyFloats, num_frames: int, median_width: int) -> Array:
    """`scores` `[heads, tokens, frames]` (scaled, before softmax) to the `[tokens, frames]`
    matrix DTW runs on: cropped to the audio's frames, softmax over frames, standardised over
    tokens, median-filtered over frames, averaged over heads."""
    frames = max(1, min(scores.shape[-1], num_frames // 2))
    weights = softmax(scores[..., :frames].astype(np.float64))
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = (weights - mean) / np.where(std > 0, std, 1.0)
    weights = median_filter(weights, median_width)
    result: Array = weights.mean(axis=0)
    return result


def negative_dtw(matrix: AnyFloats) -> list[tuple[int, int]]:
    """The monotonic path through `-matrix` of least cost, as (token, frame) pairs from the
    start. Cells of one anti-diagonal are independent, so each diagonal is one numpy step."""
    x = -np.asarray(matrix, dtype=np.float64)
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    cost[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    for diagonal in range(2, n + m + 1):
        i = np.arange(max(1, diagonal - m), min(n, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        # Whisper's tie-breaking: diagonal only when strictly best, then up, else left.
        best = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        cost[i, j] = x[i - 1, j - 1] + np.choose(best, [c0, c1, c2])
        trace[i, j] = best
    return _backtrace(trace, n, m)


def _backtrace(trace: npt.NDArray[Any], n: int, m: int) -> list[tuple[int, int]]:
    i, j = n, m
    path: list[tuple[int, int]] = []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        move = trace[i, j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    path.reverse()
    return path
