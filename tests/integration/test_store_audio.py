"""One contract, two audio stores: files in the node's directory, and chunks in PostgreSQL."""

from __future__ import annotations

import io
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from test_store_contract import pg_ok, pg_url  # noqa: F401  (fixtures)

from gpuscribe.domain import NewTask, Priority, TranscriptionOptions
from gpuscribe.store.audio import (
    CHUNK_BYTES,
    ORPHAN_AGE_SECONDS,
    PG_PREFIX,
    AudioStore,
    AudioUnavailable,
    LocalAudioStore,
    PostgresAudioStore,
    adopt_file,
    audio_store_for,
    open_audio_store,
    spool,
)
from gpuscribe.store.postgres import PostgresStore
from gpuscribe.store.sqlite import SqliteStore


class Source(io.RawIOBase):
    """`size` bytes made as they are read: the test itself never holds them all."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.size - self.pos)
        for i in range(0, n, 4096):
            end = min(n, i + 4096)
            buffer[i:end] = pattern(self.pos + i, end - i)
        self.pos += n
        return n


def pattern(offset: int, length: int) -> bytes:
    """Bytes that depend on their offset, so that a chunk out of order shows."""
    block = (offset // 4096).to_bytes(4, "big") * 1024
    return block[:length]


@pytest.fixture(params=["local", "postgres"])
def audio(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AudioStore]:
    if request.param == "local":
        yield LocalAudioStore(tmp_path / "audio")
        return
    store = PostgresStore(request.getfixturevalue("pg_url"))
    yield PostgresAudioStore(store.pool)
    store.close()


def content(audio: AudioStore, ref: str) -> bytes:
    return b"".join(audio.read(ref))


def test_put_read_delete(audio: AudioStore, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 12345)
    ref = audio.put("a.wav", io.BytesIO(data))
    chunks = list(audio.read(ref))
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= CHUNK_BYTES and len(chunks) == 3
    assert content(audio, audio.put("empty.wav", io.BytesIO(b""))) == b""
    audio.delete(ref)
    audio.delete(ref)  # absent: no error
    with pytest.raises(AudioUnavailable):
        content(audio, ref)
    with pytest.raises(FileNotFoundError):  # AudioUnavailable is one
        content(audio, ref)


def test_spool_gives_a_file_and_cleans_up(audio: AudioStore, tmp_path: Path) -> None:
    ref = audio.put("b.flac", io.BytesIO(b"fLaC" * 1000))
    spool_dir = tmp_path / "spool"
    with spool(audio, ref, spool_dir) as path:
        assert path.read_bytes() == b"fLaC" * 1000
        assert path.suffix == ".flac"
    assert not any(spool_dir.glob("spool-*"))
    audio.delete(ref)
    with pytest.raises(AudioUnavailable), spool(audio, ref, spool_dir):
        pass
    assert not any(spool_dir.glob("spool-*"))


def test_audio_streams_in_and_out_without_being_held_whole(audio: AudioStore) -> None:
    size = 32 * CHUNK_BYTES
    tracemalloc.start()
    try:
        ref = audio.put("big.wav", Source(size))  # type: ignore[arg-type]
        put_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        total = 0
        for i, chunk in enumerate(audio.read(ref)):
            assert chunk[:4096] == pattern(i * CHUNK_BYTES, 4096)
            total += len(chunk)
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == size
    # A few chunks at a time (psycopg holds a chunk and its wire copy), never the 32 MiB.
    assert put_peak < 6 * CHUNK_BYTES and read_peak < 6 * CHUNK_BYTES, (put_peak, read_peak)
    audio.delete(ref)


def test_adopt_file_local_keeps_the_file_postgres_moves_it(
    audio: AudioStore, tmp_path: Path
) -> None:
    upload = tmp_path / "upload.wav"
    upload.write_bytes(b"RIFF" * 10)
    ref = adopt_file(audio, upload)
    assert content(audio, ref) == b"RIFF" * 10
    if isinstance(audio, LocalAudioStore):
        assert ref == str(upload) and upload.exists()
    else:
        assert ref == PG_PREFIX + "upload.wav" and not upload.exists()


def test_open_audio_store_follows_the_task_store(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    sqlite = SqliteStore(str(tmp_path / "s.db"))
    assert isinstance(open_audio_store(sqlite, tmp_path / "audio"), LocalAudioStore)
    sqlite.close()
    pg = PostgresStore(pg_url)
    assert isinstance(open_audio_store(pg, tmp_path / "audio"), PostgresAudioStore)
    pg.close()
    # A worker process opens the store a reference names, from its settings.
    assert isinstance(
        audio_store_for("/x/a.wav", store_url=pg_url, audio_dir=tmp_path), LocalAudioStore
    )
    opened = audio_store_for(PG_PREFIX + "a.wav", store_url=pg_url, audio_dir=tmp_path)
    assert isinstance(opened, PostgresAudioStore)
    opened.close()
    with pytest.raises(AudioUnavailable, match="not"):
        audio_store_for(PG_PREFIX + "a.wav", store_url="sqlite:///x.db", audio_dir=tmp_path)


def test_sweep_removes_old_audio_no_live_task_names(pg_url: str) -> None:  # noqa: F811
    store = PostgresStore(pg_url)
    audio = PostgresAudioStore(store.pool)
    live = audio.put("live.wav", io.BytesIO(b"1"))
    orphan = audio.put("orphan.wav", io.BytesIO(b"2"))
    fresh = audio.put("fresh.wav", io.BytesIO(b"3"))
    store.add(NewTask(Priority.NORMAL, TranscriptionOptions(), live, 1.0, "wav"), now=1.0)
    old = time.time() - 2 * ORPHAN_AGE_SECONDS
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE audio_objects SET created_at = %s WHERE name <> 'fresh.wav'", (old,))
    assert audio.sweep(created_before=time.time() - ORPHAN_AGE_SECONDS) == 1
    assert content(audio, live) == b"1" and content(audio, fresh) == b"3"
    with pytest.raises(AudioUnavailable):
        content(audio, orphan)
    with psycopg.connect(pg_url) as conn:  # the chunks went with their object
        (chunks,) = conn.execute("SELECT count(*) FROM audio_chunks").fetchone() or (0,)
    assert chunks == 2
    store.close()


def test_a_reader_sees_all_of_an_upload_or_none(pg_url: str) -> None:  # noqa: F811
    """An upload that fails halfway leaves nothing behind (one transaction)."""
    store = PostgresStore(pg_url)
    audio = PostgresAudioStore(store.pool)

    class Broken(io.RawIOBase):
        calls = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            Broken.calls += 1
            if Broken.calls > 2:
                raise OSError("client went away")
            buffer[:10] = b"0123456789"
            return 10

    with pytest.raises(OSError, match="client went away"):
        audio.put("cut.wav", io.BufferedReader(Broken()))
    with pytest.raises(AudioUnavailable):
        content(audio, PG_PREFIX + "cut.wav")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM audio_chunks").fetchone() == (0,)
    store.close()
