"""decode(): 16 kHz mono float32, exactly what faster-whisper decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faster_whisper.audio import decode_audio

from gpuscribe.audio.decode import decode
from gpuscribe.bench.speech import samples, short_clip
from gpuscribe.domain import InvalidRequest
from support.audio import encode


@pytest.fixture(scope="module")
def stereo_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Speech as 44.1 kHz stereo MP3: decoding must mix down and resample."""
    speech = samples(short_clip().path, rate=44100)
    return encode(tmp_path_factory.mktemp("decode") / "s.mp3", speech, "mp3", rate=44100,
                  channels=2)  # fmt: skip


def test_matches_faster_whisper(stereo_mp3: Path) -> None:
    audio = decode(stereo_mp3)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    np.testing.assert_array_equal(audio, decode_audio(str(stereo_mp3)))


def test_length_follows_sample_rate(stereo_mp3: Path) -> None:
    at_16k = decode(stereo_mp3)
    at_8k = decode(stereo_mp3, sample_rate=8000)
    assert at_8k.size == pytest.approx(at_16k.size / 2, abs=600)
    assert float(np.abs(at_16k).max()) > 0.05  # speech, not silence


def test_not_audio_is_invalid_request(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(InvalidRequest, match="cannot decode the audio"):
        decode(tmp_path / "x.wav")


def test_sample_rate_must_be_positive(stereo_mp3: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        decode(stereo_mp3, sample_rate=0)
