"""A full disk is said as such: a pool that cannot take more bytes is InsufficientStorage (HTTP 507), a database that
cannot record a change is ServiceUnavailable (HTTP 503); nothing half-written stays, and reads go on."""

from __future__ import annotations

import errno
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from tests.tmpfs import tiny_tmpfs
from virtfleet.errors import InsufficientStorage, ServiceUnavailable
from virtfleet.hostcmd import STOPPED, process_scope
from virtfleet.storage import transfer
from virtfleet.storage.transfer import TransferError, write_stream
from virtfleet.store.db import Database

MiB = 1 << 20


def chunks(count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield b"\x5a" * MiB


class FillsUp(io.FileIO):
    """A file whose file system fills up after `room` bytes (or fails with another errno)."""

    room = 2 * MiB
    failure = errno.ENOSPC

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(self.failure, "simulated")
        return super().write(data)


@pytest.mark.parametrize(("failure", "error", "says"), [
    (errno.ENOSPC, InsufficientStorage, "free space in the pool"),
    (errno.EDQUOT, InsufficientStorage, "free space in the pool"),
    (errno.EIO, TransferError, "cannot write disk"),
])
def test_a_write_that_fails_for_want_of_space_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      failure: int, error: type[Exception], says: str) -> None:
    monkeypatch.setattr(FillsUp, "failure", failure)

    def fills_up(fd: int, mode: str) -> FillsUp:  # the writer opens its private file by descriptor
        return FillsUp(fd, mode)

    monkeypatch.setattr(transfer.os, "fdopen", fills_up)
    with pytest.raises(error, match=says) as raised:
        write_stream(chunks(4), tmp_path / "disk", total=None)
    assert type(raised.value) is error
    assert list(tmp_path.iterdir()) == []


def test_a_stream_larger_than_a_real_file_system(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "small", "2m") as small:
        with pytest.raises(InsufficientStorage, match="No space left on device"):
            write_stream(chunks(8), small / "disk", total=None)
        assert list(small.iterdir()) == []


def test_an_abandoned_stream_stops_at_the_next_chunk(tmp_path: Path) -> None:
    def body() -> Iterator[bytes]:
        yield b"x" * MiB
        scope.kill()  # the job is cancelled meanwhile
        yield b"y" * MiB
        raise AssertionError("read on after the work was abandoned")

    with process_scope() as scope, pytest.raises(TransferError, match=STOPPED):
        write_stream(body(), tmp_path / "disk", total=None)
    assert list(tmp_path.iterdir()) == []


def test_a_database_that_cannot_grow_refuses_changes_and_still_answers_reads(tmp_path: Path) -> None:
    db = Database.sqlite(tmp_path / "db.sqlite")
    db.migrate()
    first = db.add_job("volume.create", "volume:a")
    db.engine.dispose()
    pages = db.engine.connect().exec_driver_sql("PRAGMA page_count").scalar()

    # SQLITE_FULL, as on a full disk: the file may not grow past the pages it has now.
    @event.listens_for(db.engine, "connect")
    def _cap(connection: Any, _record: Any) -> None:
        connection.execute(f"PRAGMA max_page_count = {pages}")

    db.engine.dispose()
    with pytest.raises(ServiceUnavailable, match="its file system is full") as refused:
        for index in range(10_000):
            db.add_job("volume.create", f"volume:{index}" * 20)
    assert "database or disk is full" in refused.value.message
    assert db.get_job(first.id).target == "volume:a"
