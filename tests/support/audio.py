"""Synthetic audio for tests: speech from espeak-ng, other formats from ffmpeg, lengths from sox,
and hostile files that are not (or no longer) audio.

Everything is made once per test session under one directory (`AudioSet(root)`), and each file
is made the first time it is asked for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

# Plain English, numbers spelled out; each clip is two sentences (about 25 words, 8 to 10 s of
# speech) so that one misheard word moves the word error rate by about 0.04, not 0.1.
SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog near the river bank. "
    "Seven children walked home from school on a cold and windy afternoon.",
    "Please send the quarterly report to the finance team before Friday morning. "
    "We expect twelve new customers to sign the contract next week.",
    "The weather today will be sunny with a light breeze from the west. "
    "Tomorrow brings heavy rain and temperatures near fifteen degrees.",
    "Our meeting starts at nine o'clock in the large room on the second floor. "
    "Bring your notes and a copy of the project plan.",
    "She bought three apples, two oranges and a loaf of fresh bread at the market. "
    "The total came to eleven dollars and forty cents.",
    "The train to the city leaves every twenty minutes from platform four. "
    "Passengers must buy a ticket before they board.",
    "Doctors recommend drinking water and sleeping eight hours every night. "
    "A short walk after dinner also helps the body rest.",
    "The library will close early on Monday for the national holiday. "
    "Books can be returned in the box beside the front door.",
)

SPEECH_FORMATS: tuple[str, ...] = ("wav", "flac", "mp3", "ogg")

REQUIRED_TOOLS = ("espeak-ng", "sox", "ffmpeg")


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")


@dataclass(frozen=True, slots=True)
class Clip:
    """A speech clip: the file and the text that was spoken."""

    index: int
    fmt: str
    path: Path
    text: str


class AudioSet:
    """Lazily made, cached test audio under `root`. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # --- speech -------------------------------------------------------------------------------
    def speech(self, index: int, fmt: str = "wav") -> Clip:
        """Sentence pair `index` spoken by espeak-ng, in `fmt` (wav, flac, mp3, ogg)."""
        if fmt not in SPEECH_FORMATS:
            raise ValueError(f"unknown speech format {fmt!r}")
        text = SENTENCES[index]
        with self._lock:
            wav = self.root / f"speech-{index}.wav"
            if not wav.exists():
                tmp = wav.with_suffix(".tmp.wav")
                _run(["espeak-ng", "-w", str(tmp), "-s", "150", text])
                os.replace(tmp, wav)
            path = wav
            if fmt != "wav":
                path = self.root / f"speech-{index}.{fmt}"
                if not path.exists():
                    tmp = self.root / f"speech-{index}.tmp.{fmt}"
                    codec = ["-c:a", "libvorbis"] if fmt == "ogg" else []
                    _run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(wav), *codec, str(tmp)])
                    os.replace(tmp, path)
        return Clip(index, fmt, path, text)

    def short_speech(self) -> Clip:
        """About one and a half seconds of speech (wav): quick to transcribe."""
        text = "Testing one two three."
        path = self.root / "short-speech.wav"
        with self._lock:
            if not path.exists():
                tmp = path.with_suffix(".tmp.wav")
                _run(["espeak-ng", "-w", str(tmp), "-s", "150", text])
                os.replace(tmp, path)
        return Clip(-1, "wav", path, text)

    def all_speech(self, formats: tuple[str, ...] = SPEECH_FORMATS) -> list[Clip]:
        return [self.speech(i, fmt) for fmt in formats for i in range(len(SENTENCES))]

    # --- lengths ------------------------------------------------------------------------------
    def silence(self, seconds: float, fmt: str = "wav", rate: int = 16000) -> Path:
        """Digital silence of the given length (mono, 16 bit)."""
        return self._sox_synth(f"silence-{seconds:g}s-{rate}", seconds, fmt, rate, tone=False)

    def tone(self, seconds: float, fmt: str = "wav", rate: int = 16000) -> Path:
        """A quiet 300 Hz tone of the given length (mono, 16 bit)."""
        return self._sox_synth(f"tone-{seconds:g}s-{rate}", seconds, fmt, rate, tone=True)

    def _sox_synth(self, stem: str, seconds: float, fmt: str, rate: int, *, tone: bool) -> Path:
        path = self.root / f"{stem}.{fmt}"
        with self._lock:
            if not path.exists():
                tmp = self.root / f"{stem}.tmp.{fmt}"
                effect = (
                    ["synth", f"{seconds:g}", "sine", "300", "vol", "0.05"]
                    if tone
                    else ["trim", "0", f"{seconds:g}"]
                )
                _run(["sox", "-n", "-r", str(rate), "-c", "1", "-b", "16", str(tmp), *effect])
                os.replace(tmp, path)
        return path

    def long_speech(self, repeats: int = 8) -> Path:
        """All sentence pairs one after another, `repeats` times (about 80 s per repeat), wav."""
        path = self.root / f"long-speech-x{repeats}.wav"
        with self._lock:
            if path.exists():
                return path
        parts = [str(self.speech(i, "wav").path) for i in range(len(SENTENCES))]
        with self._lock:
            if not path.exists():
                tmp = self.root / f"long-speech-x{repeats}.tmp.wav"
                _run(["sox", *(parts * repeats), "-r", "16000", "-c", "1", str(tmp)])
                os.replace(tmp, path)
        return path

    # --- hostile files ------------------------------------------------------------------------
    def random_bytes(self) -> Path:
        """64 KiB of random bytes named `.wav`."""
        path = self.root / "random-bytes.wav"
        with self._lock:
            if not path.exists():
                path.write_bytes(os.urandom(64 * 1024))
        return path

    def text_as_wav(self) -> Path:
        """A text file named `.wav`."""
        path = self.root / "text.wav"
        with self._lock:
            if not path.exists():
                path.write_text("This is not audio. It is a text file with a .wav name.\n" * 50)
        return path

    def empty(self, suffix: str = "wav") -> Path:
        """A zero-length file."""
        path = self.root / f"empty.{suffix}"
        with self._lock:
            if not path.exists():
                path.write_bytes(b"")
        return path

    def truncated(self, fmt: str, keep_bytes: int | None = None) -> Path:
        """The start of a speech clip in `fmt` (mp3 or flac): headers, but no whole audio frame."""
        if fmt not in ("mp3", "flac", "wav", "ogg"):
            raise ValueError(f"cannot truncate {fmt!r}")
        keep = keep_bytes if keep_bytes is not None else {"flac": 60, "mp3": 80}.get(fmt, 60)
        source = self.speech(0, fmt).path
        path = self.root / f"truncated-{keep}.{fmt}"
        with self._lock:
            if not path.exists():
                path.write_bytes(source.read_bytes()[:keep])
        return path
