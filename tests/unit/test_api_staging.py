"""api.staging: a StagedUpload owns its file until the commit, on a real directory."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gpuscribe.api.staging import WRITE_BATCH_BYTES, StagedUpload


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_a_committed_upload_is_kept_under_its_name(tmp_path: Path) -> None:
    async def upload() -> Path:
        async with StagedUpload(tmp_path) as staged:
            staged.buffer(b"RIFF")
            staged.buffer(b"data")
            staged.finish()
            final = staged.place("clip.wav")
            staged.commit()
            return final

    final = anyio.run(upload)
    assert files_in(tmp_path) == ["clip.wav"]
    assert final.read_bytes() == b"RIFFdata"


def test_an_upload_left_without_a_commit_is_deleted_wherever_it_got_to(tmp_path: Path) -> None:
    async def upload() -> None:
        async with StagedUpload(tmp_path) as staged:
            staged.buffer(b"x" * 10)
            staged.finish()
            staged.place("clip.wav")
            raise ValueError("the audio is not acceptable")

    with pytest.raises(ValueError):
        anyio.run(upload)
    assert files_in(tmp_path) == []


def test_batches_are_written_as_they_fill_and_discarded_on_failure(tmp_path: Path) -> None:
    async def upload() -> None:
        async with StagedUpload(tmp_path) as staged:
            staged.buffer(b"a" * WRITE_BATCH_BYTES)
            assert staged.batch_ready
            staged.flush()
            assert not staged.batch_ready and staged.path.stat().st_size == WRITE_BATCH_BYTES
            raise ConnectionError("the client went away")

    with pytest.raises(ConnectionError):
        anyio.run(upload)
    assert files_in(tmp_path) == []


def test_an_upload_not_kept_counts_its_bytes_and_writes_none(tmp_path: Path) -> None:
    async def upload() -> int:
        async with StagedUpload(tmp_path, keep=False) as staged:
            staged.buffer(b"a" * (2 * WRITE_BATCH_BYTES))
            assert not staged.batch_ready
            return staged.size

    assert anyio.run(upload) == 2 * WRITE_BATCH_BYTES
    assert files_in(tmp_path) == []
