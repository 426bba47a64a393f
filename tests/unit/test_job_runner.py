"""The job runner's bookkeeping for readers of the host (watch windows) and for jobs run on behalf of another."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from virtfleet.errors import Busy
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.store.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database.sqlite(tmp_path / "vf.db")
    database.migrate()
    return database


async def done(context: JobContext) -> str:
    return "done"


class Holding:
    """Work that runs until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, context: JobContext) -> str:
        await self.release.wait()
        return "held"


async def test_a_watch_window_notes_every_job_that_took_or_released_a_key_while_open(db: Database) -> None:
    runner = JobRunner(db)
    before = runner.submit("vm.stop", "vm-before", "vm 'b'", done)
    await runner.wait(before.id, 5)
    straddling_work, busy_work = Holding(), Holding()
    straddling = runner.submit("vm.start", "vm-straddling", "vm 's'", straddling_work)
    with runner.watching() as window:
        during = runner.submit("vm.delete", "vm-during", "vm 'd'", done, locks={"volume:v1": "volume 'v1'"})
        await runner.wait(during.id, 5)
        straddling_work.release.set()
        await runner.wait(straddling.id, 5)
        assert window.unsettled("vm-during") and window.unsettled("volume:v1")  # started and ended meanwhile
        assert window.unsettled("vm-straddling")  # ended meanwhile
        assert not window.unsettled("vm-before")  # ended before: what was read shows its outcome
    with runner.watching() as later:
        assert not later.unsettled("vm-during")
        busy = runner.submit("vm.pause", "vm-busy", "vm 'x'", busy_work)
        assert later.unsettled("vm-busy")
    busy_work.release.set()
    await runner.wait(busy.id, 5)


async def test_a_job_run_on_behalf_of_another_uses_its_locks_and_leaves_them_held(db: Database) -> None:
    runner = JobRunner(db)
    parent_work = Holding()
    parent = runner.submit("vm.delete", "vm1", "vm 'a'", parent_work, locks={"volume:v1": "volume 'v1'"})
    with pytest.raises(Busy):
        runner.submit("volume.delete", "volume:default/x", "volume 'x'", done, locks={"volume:v1": "volume 'v1'"})
    child = runner.submit("volume.delete", "volume:default/x", "volume 'x'", done,
                          locks={"volume:v1": "volume 'v1'"}, within=parent)
    runner.check_free("volume:v1", "volume 'v1'", within=parent)  # the parent's own: free for it
    await runner.wait(child.id, 5)
    holder = runner.busy("volume:v1")
    assert holder is not None and holder.id == parent.id
    assert runner.busy("volume:default/x") is None
    with pytest.raises(Busy):
        runner.check_free("volume:v1", "volume 'v1'")
    parent_work.release.set()
    await runner.wait(parent.id, 5)
    assert runner.busy("volume:v1") is None and runner.busy("vm1") is None
