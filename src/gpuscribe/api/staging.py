"""`StagedUpload`: the one owner of an uploaded file, from its first byte to the commit.

The file is created in `audio_dir` under a temporary name (`.upload-*.part`, which a node
sweeps at start) with the first batch written. Bytes are buffered in memory and written a
batch at a time (`flush`, on the threadpool); `finish` writes the rest and fsyncs; `place`
renames the file to the name the service chose and fsyncs the directory. `commit` hands the
file over (to the task that now refers to it); leaving the `async with` block without a commit
deletes it, whatever went wrong and wherever the file got to. Blocking methods say so.

With `keep=False` (a repeated idempotency key: the task exists) bytes are counted, not kept.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO

from starlette.concurrency import run_in_threadpool

WRITE_BATCH_BYTES = 1024 * 1024


class StagedUpload:
    def __init__(self, audio_dir: Path, *, keep: bool = True) -> None:
        self.audio_dir = audio_dir
        self.keep = keep
        self.path = audio_dir / f".upload-{uuid.uuid4().hex}.part"
        self.size = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._handle: IO[bytes] | None = None
        self._committed = False

    async def __aenter__(self) -> StagedUpload:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._committed:
            return
        if self._handle is None:  # nothing on disk yet
            self._take_pending()
        else:
            await run_in_threadpool(self.discard)

    # --- bytes ------------------------------------------------------------------------------
    def buffer(self, chunk: bytes) -> None:
        """Bytes of the file, kept in memory until the next `flush` or `finish`."""
        self.size += len(chunk)
        if self.keep:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)

    @property
    def batch_ready(self) -> bool:
        return self._pending_bytes >= WRITE_BATCH_BYTES

    def flush(self) -> None:
        """The buffered bytes written (the file created at the first). Blocking."""
        self._open().write(self._take_pending())

    def finish(self) -> None:
        """The rest written, then the file flushed, fsync'ed and closed. Blocking."""
        handle = self._open()
        handle.write(self._take_pending())
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()

    def _take_pending(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return data

    def _open(self) -> IO[bytes]:
        if self._handle is None:
            self.audio_dir.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("xb")
        return self._handle

    # --- the name, the commit ---------------------------------------------------------------
    def place(self, name: str) -> Path:
        """The finished file renamed `name` in its directory, the rename made durable (the
        directory fsync'ed). Blocking."""
        final = self.path.with_name(name)
        os.replace(self.path, final)
        self.path = final
        _fsync_dir(final.parent)
        return final

    def commit(self) -> None:
        """The file belongs to its task now: leaving the block keeps it."""
        self._committed = True

    def discard(self) -> None:
        """The file closed and deleted, wherever it got to. Blocking."""
        self._pending.clear()
        self._pending_bytes = 0
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
