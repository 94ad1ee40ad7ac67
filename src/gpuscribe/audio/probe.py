"""Check an uploaded file is audio by decoding all of it, and measure it.

The API accepts a task only once its file has been decoded here from end to end: the container
is sniffed from the content (never the extension), the first audio stream is decoded at its own
rate without resampling, and its samples are counted. Every way a file can be unusable raises
`InvalidRequest` with a message a client can act on.

One kind of file is described without FFmpeg: a plain 16-bit PCM WAV whose `data` chunk ends
exactly at the end of the file (`_plain_pcm_wav`). Decoding such PCM cannot fail (every two bytes
are a sample), so the samples FFmpeg would decode are the data's size over the block size; FFmpeg
would spend about a millisecond of CPU on it (its WAV demuxer runs every format's probe over the
first packets, looking for compressed audio in a PCM file), which was the largest cost of a
submission. Every other file, and any WAV that is not exactly that, goes through FFmpeg.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from gpuscribe.audio.container import open_container
from gpuscribe.domain import InvalidRequest

log = logging.getLogger(__name__)

# A stream that decodes to less than this share of the duration its header declares, and at
# least this many seconds short, was cut off (an interrupted upload or copy).
_TRUNCATED_FRACTION = 0.5
_TRUNCATED_MIN_GAP_SECONDS = 1.0
# WAV data sizes that mean "unknown" (written by tools that stream to a pipe).
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
_WAV_MAX_CHUNKS = 64
# The plain WAV read without FFmpeg: chunks that may come before `data` (metadata and padding,
# as FFmpeg's own muxer and Python's `wave` write them), the largest header read, how much of the
# data is looked at for IEC 61937 (S/PDIF) bursts as FFmpeg's WAV demuxer does, the sane formats.
_WAV_SKIPPED_CHUNKS = (b"LIST", b"fact", b"JUNK", b"PAD ")
_WAV_HEAD_BYTES = 4096
_SPDIF_SCAN_BYTES = 1 << 16
_SPDIF_SYNC = b"\x72\xf8\x1f\x4e"  # Pa, Pb of an IEC 61937 burst, little-endian
_WAV_FORMAT_PCM = 1
_WAV_MAX_CHANNELS = 8
_WAV_MAX_RATE = 384_000


@dataclass(frozen=True, slots=True)
class AudioInfo:
    duration_seconds: float
    container: str
    codec: str
    sample_rate: int
    channels: int


def probe(path: str | Path, *, max_seconds: float | None = None) -> AudioInfo:
    """Decode the whole first audio stream of `path` and describe it.

    `max_seconds`, where given, stops decoding as soon as the audio is longer than that and
    rejects it (so an over-long file costs no more than the limit to check).
    """
    file = Path(path)
    size = _check_file(file)
    plain = _plain_pcm_wav(file, size)
    if plain is not None:
        if max_seconds is not None and plain.duration_seconds > max_seconds:
            raise _longer_than(max_seconds)
        return plain
    try:
        container = open_container(str(file))
    except av.EOFError as exc:
        raise InvalidRequest(
            "not an audio file, or one cut off inside its header: the data ends too early",
            code="not_audio",
        ) from exc
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"not an audio file: {_reason(exc)}", code="not_audio") from exc
    with container:
        info = _probe_container(container, max_seconds)
        _check_not_truncated(file, container, info)
    return info


def _check_file(file: Path) -> int:
    """The size of `file`, which must be a non-empty regular file."""
    if not file.is_file():
        raise InvalidRequest(f"the file {file.name!r} does not exist", code="file_not_found")
    size = file.stat().st_size
    if size == 0:
        raise InvalidRequest("the file is empty", code="empty_file")
    return size


def _plain_pcm_wav(file: Path, size: int) -> AudioInfo | None:
    """A plain 16-bit PCM WAV described from its header, or None: FFmpeg decides the rest.

    Plain: `RIFF`/`WAVE`; one `fmt ` chunk of format 1 (PCM), 16 bits, 1 to 8 channels, a block
    of 2 bytes a channel and a byte rate that agrees; only metadata or padding chunks before
    `data`; a `data` chunk of whole blocks that ends exactly at the end of the file (so nothing
    is cut off and nothing follows); no IEC 61937 burst in its first 64 KiB (FFmpeg reads those
    as the compressed audio they carry). FFmpeg would decode exactly `data size / block`
    samples from such a file: the same description, without its per-file probing cost.
    """
    with file.open("rb") as handle:
        head = handle.read(_WAV_HEAD_BYTES)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        head += handle.read(_SPDIF_SCAN_BYTES)
    offset = 12
    fmt: tuple[int, ...] | None = None
    for _ in range(_WAV_MAX_CHUNKS):
        if offset + 8 > min(len(head), _WAV_HEAD_BYTES):
            return None
        chunk_id = head[offset : offset + 4]
        chunk_size = int(struct.unpack_from("<I", head, offset + 4)[0])
        body = offset + 8
        if chunk_id == b"data":
            return _pcm_info(fmt, chunk_size, body, size, head)
        if chunk_id == b"fmt ":
            if fmt is not None or not _plain_fmt_chunk(head, body, chunk_size):
                return None
            fmt = struct.unpack_from("<HHIIHH", head, body)
        elif chunk_id not in _WAV_SKIPPED_CHUNKS:
            return None
        offset = body + chunk_size + (chunk_size & 1)
    return None


def _plain_fmt_chunk(head: bytes, body: int, chunk_size: int) -> bool:
    """A `fmt ` chunk of 16 bytes, or 18 with an empty extension, wholly inside `head`."""
    if chunk_size not in (16, 18) or body + chunk_size > len(head):
        return False
    return chunk_size == 16 or struct.unpack_from("<H", head, body + 16)[0] == 0


def _pcm_info(
    fmt: tuple[int, ...] | None, data_size: int, data_start: int, size: int, head: bytes
) -> AudioInfo | None:
    if fmt is None:
        return None
    tag, channels, rate, byte_rate, block, bits = fmt
    plain_format = (
        tag == _WAV_FORMAT_PCM
        and bits == 16
        and 1 <= channels <= _WAV_MAX_CHANNELS
        and 1 <= rate <= _WAV_MAX_RATE
        and block == 2 * channels
        and byte_rate == rate * block
    )
    if not plain_format:
        return None
    whole_data = data_size > 0 and data_size % block == 0 and data_start + data_size == size
    if not whole_data or _SPDIF_SYNC in head[data_start:]:
        return None
    return AudioInfo(
        duration_seconds=data_size // block / rate,
        container="wav",
        codec="pcm_s16le",
        sample_rate=rate,
        channels=channels,
    )


def _longer_than(max_seconds: float) -> InvalidRequest:
    return InvalidRequest(
        f"the audio is longer than the {max_seconds:g} s this server accepts",
        code="audio_too_long",
    )


def _probe_container(container: Any, max_seconds: float | None) -> AudioInfo:
    if not container.streams.audio:
        raise InvalidRequest("the file has no audio stream", code="no_audio_stream")
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # FFmpeg found a stream but has no decoder for its codec
        raise InvalidRequest(
            "not an audio file this server can decode: unsupported audio codec", code="not_audio"
        )
    codec = stream.codec_context.name
    samples, rate, channels = _count_samples(container, stream, max_seconds)
    if samples == 0 or rate <= 0:
        raise InvalidRequest(
            f"the audio has zero duration: no {codec} samples could be decoded",
            code="zero_duration",
        )
    return AudioInfo(
        duration_seconds=samples / rate,
        container=str(container.format.name),
        codec=str(codec),
        sample_rate=rate,
        channels=channels,
    )


@dataclass(slots=True)
class _Count:
    samples: int = 0
    rate: int = 0
    channels: int = 0

    @property
    def seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0


def _count_samples(container: Any, stream: Any, max_seconds: float | None) -> tuple[int, int, int]:
    """Samples decoded, their rate and channel count (from the first frame)."""
    count = _Count(rate=int(stream.sample_rate or 0), channels=int(stream.channels or 0))
    for frame in _decode(container, stream, count):
        if count.samples == 0:
            count.rate = int(frame.sample_rate or count.rate)
            count.channels = int(len(frame.layout.channels) or count.channels)
        count.samples += int(frame.samples)
        if max_seconds is not None and count.seconds > max_seconds:
            raise _longer_than(max_seconds)
    return count.samples, count.rate, count.channels


def _decode(container: Any, stream: Any, count: _Count) -> Iterator[Any]:
    """Every frame of `stream`; a demux or decode error becomes `InvalidRequest`."""
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except (av.FFmpegError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise InvalidRequest(
            f"the audio is corrupt or truncated near {count.seconds:.1f} s: {_reason(exc)}",
            code="corrupt_audio",
        ) from exc


def _check_not_truncated(file: Path, container: Any, info: AudioInfo) -> None:
    """Reject audio that ends well before its header says it does."""
    decoded = info.duration_seconds
    wav_missing = _wav_missing_seconds(file, container) if info.container == "wav" else None
    if wav_missing is not None:  # a WAV header gives the exact size: any real gap counts
        truncated = wav_missing >= _TRUNCATED_MIN_GAP_SECONDS
        declared = decoded + wav_missing
    else:  # elsewhere the declared duration may be an estimate (bit rate x size)
        declared = _declared_seconds(container.streams.audio[0]) or 0.0
        short = declared - decoded
        truncated = decoded < declared * _TRUNCATED_FRACTION and short >= _TRUNCATED_MIN_GAP_SECONDS
    if truncated:
        raise InvalidRequest(
            f"the audio is corrupt or truncated near {decoded:.1f} s: its header declares "
            f"{declared:.1f} s but the data ends there",
            code="corrupt_audio",
        )


def _declared_seconds(stream: Any) -> float | None:
    if stream.duration is None or stream.time_base is None or stream.duration <= 0:
        return None
    return float(stream.duration * stream.time_base)


def _wav_missing_seconds(file: Path, container: Any) -> float | None:
    """Seconds of PCM that the WAV `data` chunk declares beyond the end of the file; None where
    the header gives no usable size."""
    missing = _wav_missing_bytes(file)
    bit_rate = container.streams.audio[0].codec_context.bit_rate
    if missing is None or not bit_rate:
        return None
    return missing * 8 / float(bit_rate)


def _wav_missing_bytes(file: Path) -> int | None:
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        for _ in range(_WAV_MAX_CHUNKS):
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, chunk_size = chunk[:4], int(struct.unpack("<I", chunk[4:])[0])
            if chunk_id == b"data":
                if chunk_size in _WAV_UNKNOWN_SIZES:
                    return None
                return max(0, handle.tell() + chunk_size - size)
            handle.seek(chunk_size + (chunk_size & 1), 1)
    return None


def _reason(exc: BaseException) -> str:
    """FFmpeg's words without the file's server-side path."""
    strerror = getattr(exc, "strerror", None)
    text = str(strerror) if strerror else str(exc)
    log.debug("audio probe failed: %r", exc)
    return text[0].lower() + text[1:] if text else type(exc).__name__
