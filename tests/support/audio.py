"""Test audio, with no system tool: committed speech clips, everything else made with PyAV.

The speech is the clips gpuscribe ships for its benchmark (`gpuscribe.bench.speech`: eight
two-sentence clips, a short one and two minutes of continuous speech, spoken once by espeak-ng
and committed as 16 kHz mono Ogg/Opus with their texts). Every other container and codec
(`encode`: wav, flac, mp3, ogg/vorbis, opus, m4a/aac, webm), every length, silence and tone, and
every broken, truncated or hostile file is made here at test time with PyAV and numpy.

`AudioSet(root)` makes each file the first time it is asked for, under `root`, once per
session (or module).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from gpuscribe.audio import SAMPLE_RATE
from gpuscribe.bench.speech import (
    ContinuousSpeech,
    continuous_speech,
    samples,
    short_clip,
    speech_clips,
)

SPEECH_FORMATS: tuple[str, ...] = ("wav", "flac", "mp3", "ogg")
Samples = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Encoding:
    """How one format is written: the container (FFmpeg's muxer name) and the codec."""

    container: str
    codec: str
    bit_rate: int | None = None
    channels: int = 1  # FFmpeg's own Vorbis encoder writes stereo only
    options: tuple[tuple[str, str], ...] = ()


# The suffix of a file is its format's name, except opus (".opus") in an Ogg container.
ENCODINGS: dict[str, Encoding] = {
    "wav": Encoding("wav", "pcm_s16le"),
    "flac": Encoding("flac", "flac"),
    "mp3": Encoding("mp3", "libmp3lame", bit_rate=64_000),
    "ogg": Encoding("ogg", "vorbis", channels=2, options=(("strict", "experimental"),)),
    "opus": Encoding("ogg", "libopus", bit_rate=32_000),
    "m4a": Encoding("ipod", "aac", bit_rate=64_000),
    "webm": Encoding("webm", "libopus", bit_rate=32_000),
}

_CHUNK = 1 << 16  # samples per frame handed to the encoder


def _frames(audio: Samples, rate: int, channels: int, chunk: int = _CHUNK) -> Iterator[Any]:
    layout = "mono" if channels == 1 else "stereo"
    for start in range(0, max(audio.size, 1), chunk):
        part = np.ascontiguousarray(audio[start : start + chunk], dtype=np.float32)
        planar = np.repeat(part.reshape(1, -1), channels, axis=0)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        yield frame


def encode(
    path: Path,
    audio: Samples,
    fmt: str,
    *,
    rate: int = SAMPLE_RATE,
    channels: int | None = None,
    frame_samples: int = _CHUNK,
    bit_rate: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Mono float32 `audio` at `rate` written to `path` in `fmt` (a key of ENCODINGS) with PyAV.

    `channels` copies the one channel (2: stereo); `bit_rate` overrides the format's; `options`
    go to the encoder.
    """
    enc = ENCODINGS[fmt]
    channels = channels or enc.channels
    layout = "mono" if channels == 1 else "stereo"
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), "w", format=enc.container) as out:
        stream: Any = out.add_stream(
            enc.codec, rate=rate, layout=layout, options={**dict(enc.options), **(options or {})}
        )
        if bit_rate or enc.bit_rate:
            stream.bit_rate = bit_rate or enc.bit_rate
        for frame in _frames(audio, rate, channels, frame_samples):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def write_video(path: Path, *, seconds: float = 2.0, size: int = 64, fps: int = 10) -> Path:
    """A video with no audio stream: moving colour bars, MPEG-4 Part 2 in MP4."""
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), "w", format="mp4") as out:
        stream: Any = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(round(seconds * fps)):
            image = np.zeros((size, size, 3), dtype=np.uint8)
            image[:, :, 0] = np.arange(size, dtype=np.uint8)[None, :] * 4 + i * 8
            image[:, :, 1] = 255 - image[:, :, 0]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def write_jpeg(path: Path, *, size: int = 32) -> Path:
    """A JPEG image (a red square), written by FFmpeg's MJPEG encoder."""
    with av.open(str(path), "w", format="image2") as out:
        stream: Any = out.add_stream("mjpeg", rate=1)
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p"
        image = np.zeros((size, size, 3), dtype=np.uint8)
        image[:, :, 0] = 255
        out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def tone_samples(
    seconds: float, rate: int = SAMPLE_RATE, hz: float = 300.0, level: float = 0.05
) -> Samples:
    """A sine of `hz` at `level` (full scale 1), mono float32."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


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
        self._lock = threading.RLock()
        self.clips = speech_clips()

    def _made(self, name: str, make: Any) -> Path:
        """`root/name`, made by `make(path)` the first time."""
        path = self.root / name
        with self._lock:
            if not path.exists():
                make(path)
        return path

    # --- speech -------------------------------------------------------------------------------
    @property
    def sentences(self) -> tuple[str, ...]:
        return tuple(c.text for c in self.clips)

    def speech_samples(self, index: int) -> Samples:
        """Sentence pair `index` as 16 kHz mono float32."""
        return samples(self.clips[index].path)

    def speech(self, index: int, fmt: str = "wav") -> Clip:
        """Sentence pair `index` (0-7, about 9 s) in `fmt` (a key of ENCODINGS)."""
        if fmt not in ENCODINGS:
            raise ValueError(f"unknown speech format {fmt!r}")
        path = self._made(
            f"speech-{index}.{fmt}", lambda p: encode(p, self.speech_samples(index), fmt)
        )
        return Clip(index, fmt, path, self.clips[index].text)

    def first_seconds(self, index: int, seconds: float) -> Path:
        """The first `seconds` of sentence pair `index`, as WAV."""
        return self._made(
            f"speech-{index}-first-{seconds:g}s.wav",
            lambda p: encode(p, self.speech_samples(index)[: round(seconds * SAMPLE_RATE)], "wav"),
        )

    def short_speech(self) -> Clip:
        """About one and a half seconds of speech (wav): quick to transcribe."""
        clip = short_clip()
        path = self._made("short-speech.wav", lambda p: encode(p, samples(clip.path), "wav"))
        return Clip(-1, "wav", path, clip.text)

    def all_speech(self, formats: tuple[str, ...] = SPEECH_FORMATS) -> list[Clip]:
        return [self.speech(i, fmt) for fmt in formats for i in range(len(self.clips))]

    def continuous(self, fmt: str = "wav") -> tuple[Path, ContinuousSpeech]:
        """About two minutes of continuous speech in `fmt`, and its sentences with their times."""
        speech = continuous_speech()
        path = self._made(f"continuous.{fmt}", lambda p: encode(p, samples(speech.path), fmt))
        return path, speech

    def long_speech(self, repeats: int = 8) -> Path:
        """All sentence pairs one after another, `repeats` times (about 72 s per repeat), wav."""

        def make(path: Path) -> None:
            once = np.concatenate([self.speech_samples(i) for i in range(len(self.clips))])
            encode(path, np.tile(once, repeats), "wav")

        return self._made(f"long-speech-x{repeats}.wav", make)

    # --- lengths ------------------------------------------------------------------------------
    def silence(self, seconds: float, fmt: str = "wav", rate: int = SAMPLE_RATE) -> Path:
        """Digital silence of the given length (mono)."""
        zeros = np.zeros(round(seconds * rate), dtype=np.float32)
        return self._made(
            f"silence-{seconds:g}s-{rate}.{fmt}", lambda p: encode(p, zeros, fmt, rate=rate)
        )

    def tone(self, seconds: float, fmt: str = "wav", rate: int = SAMPLE_RATE) -> Path:
        """A quiet 300 Hz tone of the given length (mono)."""
        return self._made(
            f"tone-{seconds:g}s-{rate}.{fmt}",
            lambda p: encode(p, tone_samples(seconds, rate), fmt, rate=rate),
        )

    def ten_hours_of_silence(self) -> Path:
        """10 h of 8 kHz silence as FLAC with 65535-sample frames: ~70 KB, made in seconds."""
        zeros = np.zeros(36_000 * 8000, dtype=np.float32)
        options = {"compression_level": "0", "frame_size": "65535"}
        return self._made(
            "silence-10h.flac",
            lambda p: encode(p, zeros, "flac", rate=8000, frame_samples=65535, options=options),
        )

    # --- not audio ----------------------------------------------------------------------------
    def video_without_audio(self) -> Path:
        """Two seconds of MP4 video with no audio stream."""
        return self._made("video-no-audio.mp4", write_video)

    def image(self) -> Path:
        """A JPEG image."""
        return self._made("image.jpg", write_jpeg)

    # --- hostile files ------------------------------------------------------------------------
    def random_bytes(self) -> Path:
        """64 KiB of random bytes named `.wav`."""
        return self._made("random-bytes.wav", lambda p: p.write_bytes(os.urandom(64 * 1024)))

    def text_as_wav(self) -> Path:
        """A text file named `.wav`."""
        text = "This is not audio. It is a text file with a .wav name.\n" * 50
        return self._made("text.wav", lambda p: p.write_text(text))

    def empty(self, suffix: str = "wav") -> Path:
        """A zero-length file."""
        return self._made(f"empty.{suffix}", lambda p: p.write_bytes(b""))

    def truncated(self, fmt: str, keep_bytes: int | None = None) -> Path:
        """The start of a speech clip in `fmt` (mp3 or flac): headers, but no whole audio frame."""
        if fmt not in ("mp3", "flac", "wav", "ogg"):
            raise ValueError(f"cannot truncate {fmt!r}")
        keep = keep_bytes if keep_bytes is not None else {"flac": 60, "mp3": 80}.get(fmt, 60)
        source = self.speech(0, fmt).path
        return self._made(
            f"truncated-{keep}.{fmt}", lambda p: p.write_bytes(source.read_bytes()[:keep])
        )
