"""Decode audio to what Whisper takes: mono float32 samples at 16 kHz."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from faster_whisper.audio import decode_audio

from gpuscribe.domain import InvalidRequest

log = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE = 16000


def decode(path: str | Path, *, sample_rate: int = WHISPER_SAMPLE_RATE) -> npt.NDArray[np.float32]:
    """The first audio stream of `path`, mixed down to mono and resampled to `sample_rate`
    (PyAV's resampler, exactly as faster-whisper decodes)."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, not {sample_rate}")
    try:
        audio = decode_audio(str(path), sampling_rate=sample_rate)
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot decode the audio: {exc}", code="corrupt_audio") from exc
    samples = np.asarray(audio, dtype=np.float32)
    log.debug("decoded %s: %d samples at %d Hz", path, samples.size, sample_rate)
    return samples
