"""The speech clips shipped with gpuscribe (`bench/clips/`), for `gpuscribe bench` and the tests.

The clips were spoken once by espeak-ng and committed (`tools/make_speech_clips.py`
made them): 16 kHz mono Ogg/Opus, with their texts in `clips.json`. Nothing here needs a
system tool: the clips are decoded with PyAV, like any upload.

- eight speech clips of two sentences each (about 8 to 10 s, 25 words);
- one short clip ("Testing one two three.", about 1.5 s);
- about two minutes of continuous speech, one sentence after another, with where each
  sentence starts and ends.
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gpuscribe.audio import SAMPLE_RATE
from gpuscribe.audio.decode import decode

CLIPS_DIR = Path(__file__).resolve().parent / "clips"
INDEX = CLIPS_DIR / "clips.json"


@dataclass(frozen=True, slots=True)
class SpeechClip:
    """A committed clip and the text spoken in it."""

    path: Path
    text: str


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class ContinuousSpeech:
    """Sentences spoken one after another in one clip, each with its start and end (s)."""

    path: Path
    sentences: tuple[Sentence, ...]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)

    @property
    def seconds(self) -> float:
        return self.sentences[-1].end

    def first(self, count: int) -> tuple[npt.NDArray[np.float32], str]:
        """The first `count` sentences: their samples (16 kHz mono) and their text."""
        if not 0 < count <= len(self.sentences):
            raise ValueError(f"count must be 1 to {len(self.sentences)}, not {count}")
        end = round(self.sentences[count - 1].end * SAMPLE_RATE)
        text = " ".join(s.text for s in self.sentences[:count])
        return samples(self.path)[:end], text


@cache
def _index() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(INDEX.read_text(encoding="utf-8"))
    return data


def speech_clips() -> tuple[SpeechClip, ...]:
    """The eight two-sentence clips, in order."""
    return tuple(SpeechClip(CLIPS_DIR / c["file"], c["text"]) for c in _index()["speech"])


def short_clip() -> SpeechClip:
    """About one and a half seconds of speech."""
    short = _index()["short"]
    return SpeechClip(CLIPS_DIR / short["file"], short["text"])


def continuous_speech() -> ContinuousSpeech:
    """About two minutes of continuous speech."""
    entry = _index()["continuous"]
    sentences = tuple(Sentence(s["text"], s["start"], s["end"]) for s in entry["sentences"])
    return ContinuousSpeech(CLIPS_DIR / entry["file"], sentences)


def samples(path: Path, *, rate: int = SAMPLE_RATE) -> npt.NDArray[np.float32]:
    """A clip decoded to mono float32 at `rate` (PyAV, as faster-whisper decodes)."""
    return decode(path, sample_rate=rate)


def write_wav(path: Path, audio: npt.NDArray[np.float32], *, rate: int = SAMPLE_RATE) -> Path:
    """`audio` (mono float32 in [-1, 1]) as a 16-bit PCM WAV file."""
    pcm = (np.clip(audio, -1.0, 32767 / 32768) * 32768.0).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()
