"""A short WAV made here (a tone, 16 kHz mono), for API tests that need valid audio but not
speech."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path


def tone_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(rate * seconds))
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return path
