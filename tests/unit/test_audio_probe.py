"""probe(): real speech in several containers, and every hostile input we know of."""

from __future__ import annotations

import importlib
import os
import random
import shutil
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from gpuscribe.audio.probe import AudioInfo, probe
from gpuscribe.bench.speech import samples, speech_clips
from gpuscribe.domain import InvalidRequest
from support.audio import encode, tone_samples, write_jpeg, write_video

probe_module = importlib.import_module("gpuscribe.audio.probe")

# Speech at 22.05 kHz, not Whisper's 16 kHz: the rate must be read from the file.
RATE = 22050


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    speech = samples(speech_clips()[0].path, rate=RATE)
    for ext in ("wav", "flac", "mp3", "ogg"):
        encode(root / f"speech.{ext}", speech, ext, rate=RATE)
    for ext in ("opus", "m4a", "webm"):  # Opus runs at 48 kHz whatever its input
        encode(root / f"speech.{ext}", samples(speech_clips()[0].path), ext)
    write_jpeg(root / "image.jpg")
    write_video(root / "silent_video.mp4", seconds=1.0)
    return root


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def _cut(source: Path, target: Path, size: int) -> Path:
    target.write_bytes(source.read_bytes()[:size])
    return target


def _expect(path: Path, code: str, words: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        probe(path)
    assert caught.value.code == code
    assert words in caught.value.message
    return caught.value


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "ogg"])
def test_duration_of_speech_in_each_container(media: Path, ext: str) -> None:
    info = probe(media / f"speech.{ext}")
    assert isinstance(info, AudioInfo)
    assert info.duration_seconds == pytest.approx(_wav_seconds(media / "speech.wav"), abs=0.1)
    assert info.channels == (2 if ext == "ogg" else 1)  # FFmpeg's Vorbis encoder: stereo only
    assert info.sample_rate == RATE


@pytest.mark.parametrize(
    ("ext", "container", "codec", "rate"),
    [
        ("opus", "ogg", "opus", 48000),
        ("m4a", "mov,mp4,m4a,3gp,3g2,mj2", "aac", 16000),
        ("webm", "matroska,webm", "opus", 48000),
    ],
)
def test_opus_aac_and_webm(media: Path, ext: str, container: str, codec: str, rate: int) -> None:
    info = probe(media / f"speech.{ext}")
    assert (info.container, info.codec, info.sample_rate, info.channels) == (
        container,
        codec,
        rate,
        1,
    )
    assert info.duration_seconds == pytest.approx(_wav_seconds(media / "speech.wav"), abs=0.1)


def test_container_and_codec_are_reported(media: Path) -> None:
    assert (probe(media / "speech.flac").container, probe(media / "speech.flac").codec) == (
        "flac",
        "flac",
    )
    assert probe(media / "speech.ogg").codec == "vorbis"


def test_extension_is_not_trusted(media: Path, tmp_path: Path) -> None:
    disguised = tmp_path / "really_mp3.wav"
    shutil.copy(media / "speech.mp3", disguised)
    assert probe(disguised).container == "mp3"
    fake = tmp_path / "text.mp3"
    fake.write_text("this is not audio at all\n")
    _expect(fake, "not_audio", "not an audio file")


def test_stereo_and_rate_are_read(tmp_path: Path) -> None:
    path = encode(tmp_path / "tone.opus", tone_samples(2.0, 48000, hz=440.0), "opus", rate=48000,
                  channels=2)  # fmt: skip
    info = probe(path)
    assert (info.channels, info.sample_rate) == (2, 48000)
    assert info.duration_seconds == pytest.approx(2.0, abs=0.1)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    _expect(tmp_path / "empty.wav", "empty_file", "the file is empty")


def test_missing_file(tmp_path: Path) -> None:
    _expect(tmp_path / "absent.wav", "file_not_found", "does not exist")


def test_random_bytes(tmp_path: Path) -> None:
    # Seeded: some draws of os.urandom happen to look like a stream FFmpeg reads (the test
    # failed once in many runs).
    (tmp_path / "noise.bin").write_bytes(random.Random(4096).randbytes(4096))
    _expect(tmp_path / "noise.bin", "not_audio", "not an audio file")


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("minutes of the meeting\n" * 50)
    with pytest.raises(InvalidRequest) as caught:
        probe(tmp_path / "notes.txt")
    # FFmpeg reads some text as a (soundless) ANSI-art video: either answer is right.
    assert caught.value.code in ("not_audio", "no_audio_stream")


def test_jpeg_has_no_audio(media: Path) -> None:
    _expect(media / "image.jpg", "no_audio_stream", "the file has no audio stream")


def test_video_without_sound(media: Path) -> None:
    _expect(media / "silent_video.mp4", "no_audio_stream", "the file has no audio stream")


@pytest.mark.parametrize("ext", ["flac", "ogg"])
def test_header_cut_off(media: Path, tmp_path: Path, ext: str) -> None:
    cut = _cut(media / f"speech.{ext}", tmp_path / f"cut.{ext}", 60)
    _expect(cut, "not_audio", "not an audio file")


def test_mp3_cut_after_its_header(media: Path, tmp_path: Path) -> None:
    cut = _cut(media / "speech.mp3", tmp_path / "cut.mp3", 3000)
    error = _expect(cut, "corrupt_audio", "the audio is corrupt or truncated near 0.")
    assert f"declares {_wav_seconds(media / 'speech.wav'):.1f} s" in error.message


def test_flac_cut_midway_is_corrupt(media: Path, tmp_path: Path) -> None:
    cut = _cut(media / "speech.flac", tmp_path / "cut.flac", 12000)
    _expect(cut, "corrupt_audio", "the audio is corrupt or truncated near 0.")


def test_wav_cut_midway(media: Path, tmp_path: Path) -> None:
    cut = _cut(media / "speech.wav", tmp_path / "cut.wav", 20000)
    _expect(cut, "corrupt_audio", "the audio is corrupt or truncated near 0.5 s")


def _wav_header(data_size: int, *, rate: int = 16000, channels: int = 1) -> bytes:
    block = (channels * 2) & 0xFFFF
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, (rate * block) & 0xFFFFFFFF, block, 16)
    riff = struct.pack("<I", 0xFFFFFFF0)
    return b"RIFF" + riff + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", data_size)


def test_wav_header_claiming_huge_size_without_data(tmp_path: Path) -> None:
    (tmp_path / "huge.wav").write_bytes(_wav_header(0xFFFFFFF0))
    _expect(tmp_path / "huge.wav", "zero_duration", "zero duration")


def test_wav_header_claiming_huge_size_with_some_data(tmp_path: Path) -> None:
    (tmp_path / "huge.wav").write_bytes(_wav_header(0x7FFFFFF0) + bytes(64000))
    _expect(tmp_path / "huge.wav", "corrupt_audio", "truncated near 2.0 s")


def test_wav_of_unknown_size_is_accepted(tmp_path: Path) -> None:
    """Tools that stream WAV to a pipe write 0xFFFFFFFF as the size: that is not truncation."""
    (tmp_path / "piped.wav").write_bytes(_wav_header(0xFFFFFFFF) + bytes(32000))
    assert probe(tmp_path / "piped.wav").duration_seconds == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "channels"), [(0, 1), (16000, 0), (16000, 65535)])
def test_wav_header_with_absurd_format(tmp_path: Path, rate: int, channels: int) -> None:
    (tmp_path / "odd.wav").write_bytes(
        _wav_header(1000, rate=rate, channels=channels) + bytes(1000)
    )
    with pytest.raises(InvalidRequest) as caught:
        probe(tmp_path / "odd.wav")
    assert caught.value.code in ("not_audio", "corrupt_audio")


def test_longer_than_allowed_stops_early(media: Path) -> None:
    with pytest.raises(InvalidRequest) as caught:
        probe(media / "speech.mp3", max_seconds=1.0)
    assert caught.value.code == "audio_too_long"
    assert probe(media / "speech.mp3", max_seconds=60.0).duration_seconds > 4.0


# --- plain 16-bit PCM WAV: described from its header, exactly as FFmpeg would ------------------
def _pcm_wav(path: Path, seconds: float, *, rate: int = 16000, channels: int = 1,
             width: int = 2) -> Path:  # fmt: skip
    frames = round(seconds * rate)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(os.urandom(frames * channels * width))
    return path


def _by_ffmpeg(path: Path, monkeypatch: pytest.MonkeyPatch) -> AudioInfo:
    with monkeypatch.context() as patched:
        patched.setattr(probe_module, "_plain_pcm_wav", lambda file, size: None)
        return probe(path)


@pytest.mark.parametrize(
    ("rate", "channels", "seconds"),
    [(16000, 1, 1.0), (8000, 1, 0.3), (22050, 2, 2.5), (44100, 2, 0.01), (48000, 6, 1.5)],
)
def test_plain_wav_is_described_as_ffmpeg_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int, channels: int, seconds: float
) -> None:
    made_by_wave = _pcm_wav(tmp_path / "plain.wav", seconds, rate=rate, channels=channels)
    made_by_ffmpeg = encode(
        tmp_path / "lavf.wav",
        tone_samples(seconds, rate),
        "wav",
        rate=rate,
        channels=min(2, channels),
    )  # FFmpeg's muxer puts a LIST chunk before the data
    for path in (made_by_wave, made_by_ffmpeg):
        assert probe_module._plain_pcm_wav(path, path.stat().st_size) is not None
        assert probe(path) == _by_ffmpeg(path, monkeypatch)


def test_speech_wav_takes_the_plain_path(media: Path) -> None:
    path = media / "speech.wav"
    assert probe_module._plain_pcm_wav(path, path.stat().st_size) == probe(path)


def _with_trailing_chunk(path: Path) -> Path:
    with path.open("ab") as out:
        out.write(b"LIST" + struct.pack("<I", 4) + b"INFO")
    return path


def _with_spdif_burst(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[-400:-396] = b"\x72\xf8\x1f\x4e"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda d: _pcm_wav(d / "u8.wav", 1.0, width=1),
        lambda d: _pcm_wav(d / "s24.wav", 1.0, width=3),
        lambda d: _pcm_wav(d / "s32.wav", 1.0, width=4),
        lambda d: _cut(_pcm_wav(d / "a.wav", 1.0), d / "cut.wav", 20001),
        lambda d: _cut(_pcm_wav(d / "a.wav", 3.0), d / "cut.wav", 30000),
        lambda d: _with_trailing_chunk(_pcm_wav(d / "trailing.wav", 1.0)),
        lambda d: _with_spdif_burst(_pcm_wav(d / "spdif.wav", 1.0)),
        lambda d: encode(d / "float.wav", tone_samples(1.0), "flac"),
    ],
)
def test_every_other_file_goes_to_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Any
) -> None:
    path = make(tmp_path)
    assert probe_module._plain_pcm_wav(path, path.stat().st_size) is None
    try:
        expected: AudioInfo | str = _by_ffmpeg(path, monkeypatch)
    except InvalidRequest as exc:
        expected = exc.code
    try:
        got: AudioInfo | str = probe(path)
    except InvalidRequest as exc:
        got = exc.code
    assert got == expected


@pytest.mark.parametrize(
    "header",
    [
        _wav_header(32000, rate=0),
        _wav_header(32000, channels=0),
        _wav_header(32000, channels=65535),
        _wav_header(0xFFFFFFFF),
        _wav_header(0),
        _wav_header(32000)[:-8],  # no data chunk
        _wav_header(32000).replace(b"fmt ", b"fmt_"),
        _wav_header(32000).replace(b"\x01\x00\x01\x00", b"\xfe\xff\x01\x00"),  # extensible
    ],
)
def test_odd_wav_headers_go_to_ffmpeg(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "odd.wav"
    path.write_bytes(header + bytes(32000))
    assert probe_module._plain_pcm_wav(path, path.stat().st_size) is None


def test_plain_wav_longer_than_allowed(tmp_path: Path) -> None:
    path = _pcm_wav(tmp_path / "long.wav", 3.0)
    with pytest.raises(InvalidRequest) as caught:
        probe(path, max_seconds=2.0)
    assert caught.value.code == "audio_too_long"
    assert probe(path, max_seconds=3.0).duration_seconds == pytest.approx(3.0)
