"""Where uploaded audio lives until its task is final: `AudioStore`.

- `LocalAudioStore`: files in this node's data directory (one machine, SQLite: as it always was).
  A reference is the file's path.
- `PostgresAudioStore`: chunks of 1 MiB in PostgreSQL (`audio_objects`, `audio_chunks`), so that
  every node reads the audio of any task with nothing shared but the database. A reference is
  `pgaudio:<name>`. Audio streams in and out one chunk at a time: never whole in memory.

Workers read audio through `spool`, which gives a local file to decode: the file itself for a
local store, a temporary copy for PostgreSQL. Any failure to get the bytes raises
`AudioUnavailable`: a problem of this node (its disk, its connection), not of the audio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from gpuscribe.store.sql_loader import load_queries

if TYPE_CHECKING:
    from gpuscribe.store.postgres import ConnectionPool

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
PG_PREFIX = "pgaudio:"
ORPHAN_AGE_SECONDS = 3600.0  # stored audio no live task names, this old, is garbage


class AudioUnavailable(FileNotFoundError):
    """The audio of a task cannot be read here (absent, or the store cannot be reached)."""


class AudioStore(Protocol):
    def put(self, name: str, source: IO[bytes]) -> str:
        """Store the stream (read to its end, a chunk at a time) under `name`, a name the
        service chose; return the reference tasks keep. Durable when it returns."""
        ...

    def read(self, ref: str) -> Iterator[bytes]:
        """The audio's bytes, a chunk at a time. Raises AudioUnavailable."""
        ...

    def delete(self, ref: str) -> None:
        """Remove the audio; absent audio is no error."""
        ...

    def sweep(self, *, created_before: float) -> int:
        """Remove stored audio created before the time that no queued or running task refers
        to (uploads cut off by a crash). Returns how many were removed."""
        ...


class LocalAudioStore:
    """Audio files in one directory of this node."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def put(self, name: str, source: IO[bytes]) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / name
        temp = self.directory / f".upload-{uuid.uuid4().hex}.part"
        try:
            with temp.open("xb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        return str(final)

    def adopt(self, path: Path) -> str:
        """A file already written (and fsync'ed) in this store's directory stays where it is."""
        return str(path)

    def read(self, ref: str) -> Iterator[bytes]:
        if not Path(ref).is_file():
            raise AudioUnavailable(f"the audio file {ref} is not on this node")
        with Path(ref).open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    def path_of(self, ref: str) -> Path:
        return Path(ref)

    def delete(self, ref: str) -> None:
        try:
            Path(ref).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not delete audio %s: %s", ref, exc)

    def sweep(self, *, created_before: float) -> int:
        return 0  # the node sweeps its own directory at start (Node._sweep_orphan_audio)


class PostgresAudioStore:
    """Audio in PostgreSQL, over a connection pool (the task store's, or its own)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._queries = load_queries("postgres_audio.sql")

    @classmethod
    def connect(cls, url: str) -> PostgresAudioStore:
        """A store with a pool of its own (a worker process reads audio with one connection)."""
        from gpuscribe.store.postgres import ConnectionPool

        return cls(ConnectionPool(url, 1))

    def close(self) -> None:
        self._pool.close()

    def put(self, name: str, source: IO[bytes]) -> str:
        q = self._queries
        size = 0
        chunks = 0
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(q["audio_insert_object"], {"name": name, "now": time.time()})
            while chunk := source.read(CHUNK_BYTES):
                cur.execute(q["audio_insert_chunk"], {"name": name, "seq": chunks, "data": chunk})
                size += len(chunk)
                chunks += 1
            cur.execute(q["audio_finish_object"], {"name": name, "size": size, "chunks": chunks})
        return PG_PREFIX + name

    def read(self, ref: str) -> Iterator[bytes]:
        name = _pg_name(ref)
        try:
            with self._pool.connection() as conn:
                found = conn.execute(self._queries["audio_object"], {"name": name}).fetchone()
        except Exception as exc:
            raise AudioUnavailable(f"cannot read audio {ref} from PostgreSQL: {exc}") from exc
        if found is None:
            raise AudioUnavailable(f"no audio {ref} in PostgreSQL")
        for seq in range(int(found["chunk_count"])):
            try:
                with self._pool.connection() as conn:
                    row = conn.execute(
                        self._queries["audio_chunk"], {"name": name, "seq": seq}
                    ).fetchone()
            except Exception as exc:
                raise AudioUnavailable(f"cannot read audio {ref} from PostgreSQL: {exc}") from exc
            if row is None:
                raise AudioUnavailable(f"audio {ref} lost chunk {seq} (deleted meanwhile?)")
            yield bytes(row["data"])

    def delete(self, ref: str) -> None:
        if not ref.startswith(PG_PREFIX):
            return
        with self._pool.connection() as conn:
            conn.execute(self._queries["audio_delete"], {"name": _pg_name(ref)})

    def sweep(self, *, created_before: float) -> int:
        with self._pool.connection() as conn:
            removed = conn.execute(
                self._queries["audio_sweep"], {"before": created_before, "prefix": PG_PREFIX}
            ).fetchall()
        if removed:
            log.warning("removed %d stored audio object(s) no live task refers to", len(removed))
        return len(removed)


def _pg_name(ref: str) -> str:
    if not ref.startswith(PG_PREFIX):
        raise AudioUnavailable(f"{ref!r} is not audio stored in PostgreSQL")
    return ref[len(PG_PREFIX) :]


def adopt_file(audio: AudioStore, path: Path) -> str:
    """Move a received upload (an fsync'ed file) into the store; return its reference. A local
    store keeps the file where it is (its path is the reference); others copy it in a chunk at
    a time and delete the file."""
    if isinstance(audio, LocalAudioStore):
        return audio.adopt(path)
    with path.open("rb") as source:
        ref = audio.put(path.name, source)
    path.unlink(missing_ok=True)
    return ref


@contextlib.contextmanager
def spool(audio: AudioStore, ref: str, directory: Path) -> Iterator[Path]:
    """A local file holding the audio, for as long as the block runs: the file itself for a
    local store (checked to exist), a temporary copy under `directory` otherwise."""
    if isinstance(audio, LocalAudioStore):
        path = audio.path_of(ref)
        if not path.is_file():
            raise AudioUnavailable(f"the audio file {ref} is not on this node")
        yield path
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temp = directory / f"spool-{uuid.uuid4().hex}{Path(ref).suffix}"
    except OSError as exc:
        raise AudioUnavailable(f"cannot spool audio under {directory}: {exc}") from exc
    try:
        try:
            with temp.open("xb") as out:
                for chunk in audio.read(ref):
                    out.write(chunk)
        except OSError as exc:
            if isinstance(exc, AudioUnavailable):
                raise
            raise AudioUnavailable(f"cannot spool audio {ref} to {temp}: {exc}") from exc
        yield temp
    finally:
        temp.unlink(missing_ok=True)


def audio_store_for(ref: str, *, store_url: str, audio_dir: Path) -> AudioStore:
    """The store a reference lives in, opened from settings (a worker process opens its own)."""
    if ref.startswith(PG_PREFIX):
        if not store_url.lower().startswith(("postgresql://", "postgres://")):
            raise AudioUnavailable(f"audio {ref} is in PostgreSQL but this node's store is not")
        return PostgresAudioStore.connect(store_url)
    return LocalAudioStore(audio_dir)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_audio_store(store: object, audio_dir: Path) -> AudioStore:
    """The node's audio store: in PostgreSQL beside a PostgreSQL task store (sharing its
    connections), else files under `audio_dir`. (A PostgreSQL store exists only once its module
    was imported, so a SQLite node never imports psycopg here.)"""
    postgres = sys.modules.get("gpuscribe.store.postgres")
    if postgres is not None and isinstance(store, postgres.PostgresStore):
        return PostgresAudioStore(store.pool)
    return LocalAudioStore(audio_dir)
