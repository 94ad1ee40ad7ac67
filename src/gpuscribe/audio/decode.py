"""Decode audio to what Whisper takes: mono float32 samples at 16 kHz."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from gpuscribe.audio import SAMPLE_RATE
from gpuscribe.audio.container import open_container
from gpuscribe.domain import InvalidRequest

log = logging.getLogger(__name__)


def decode(path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> npt.NDArray[np.float32]:
    """The first audio stream of `path`, mixed down to mono and resampled to `sample_rate`
    (PyAV's resampler, exactly as faster-whisper decodes)."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, not {sample_rate}")
    try:
        audio = _decode(str(path), sample_rate)
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot decode the audio: {exc}", code="corrupt_audio") from exc
    samples = np.asarray(audio, dtype=np.float32)
    log.debug("decoded %s: %d samples at %d Hz", path, samples.size, sample_rate)
    return samples


def _decode(path: str, sample_rate: int) -> npt.NDArray[np.float32]:
    """faster-whisper's own decoder where it is installed (identical samples to calling it
    directly); else the same PyAV pipeline: s16 mono resampling, scaled to [-1, 1)."""
    try:
        from faster_whisper.audio import decode_audio
    except ImportError:
        return _decode_with_pyav(path, sample_rate)
    return np.asarray(decode_audio(path, sampling_rate=sample_rate), dtype=np.float32)


def _decode_with_pyav(path: str, sample_rate: int) -> npt.NDArray[np.float32]:
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks: list[npt.NDArray[Any]] = []
    with open_container(path) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0
