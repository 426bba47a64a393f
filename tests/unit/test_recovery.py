"""The crash-safety plumbing: failpoints, the intent log, start-up recovery, and all-or-nothing job locks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from virtfleet import failpoints
from virtfleet.errors import Busy
from virtfleet.jobs.recovery import Outcome, Recovery
from virtfleet.jobs.runner import JobContext, JobRunner
from virtfleet.model.job import JobStatus
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import Intent, IntentLog, UnknownIntentVersion
from virtfleet.store.tables import IntentRow


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database.sqlite(tmp_path / "vf.db")
    database.migrate()
    return database


def test_failpoints_are_declared_and_armed_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyError):
        failpoints.hit("no.such.step")
    monkeypatch.setenv(failpoints.ENV, " volume.create.after-file ,other")
    assert failpoints.armed() == {"volume.create.after-file", "other"}
    failpoints.hit("volume.create.after-intent")  # declared, not armed: returns


def test_intent_log_records_steps_until_ended(db: Database) -> None:
    log = IntentLog(db)
    intent = log.begin("volume.new", "default/x", {"pool": "default"}, job_id="j1")
    intent = log.advance(intent, "file-made", path="/p/x")
    [pending] = log.pending()
    assert (pending.step, pending.data, pending.job_id) == ("file-made", {"pool": "default", "path": "/p/x"}, "j1")
    log.end(intent)
    assert log.pending() == []


def test_an_intent_of_unknown_version_is_refused_not_guessed(db: Database) -> None:
    log = IntentLog(db)
    intent = log.begin("volume.new", "default/x", {})
    with db.session() as session:
        row = session.get(IntentRow, intent.id)
        assert row is not None
        row.version = 99
    with pytest.raises(UnknownIntentVersion):
        log.pending()


async def test_recovery_settles_the_job_and_keeps_what_it_cannot_recover(db: Database) -> None:
    log = IntentLog(db)
    recovery = Recovery(db, log)
    done, undone, broken = (db.add_job("k", "t") for _ in range(3))
    for job in (done, undone, broken):
        db.update_job(job.id, status=JobStatus.RUNNING)
    log.begin("finish", "a", {}, job_id=done.id)
    log.begin("undo", "b", {}, job_id=undone.id)
    log.begin("broken", "c", {}, job_id=broken.id)
    log.begin("unknown", "d", {})

    async def finish(intent: Intent) -> Outcome:
        return Outcome(True, "all recorded")

    async def undo(intent: Intent) -> Outcome:
        return Outcome(False, "file removed")

    async def fail(intent: Intent) -> Outcome:
        raise RuntimeError("disk on fire")

    recovery.register("finish", finish)
    recovery.register("undo", undo)
    recovery.register("broken", fail)
    problems = await recovery.run()
    assert len(problems) == 2 and "disk on fire" in problems[0] and "unknown" in problems[1]
    assert sorted(i.kind for i in log.pending()) == ["broken", "unknown"]
    assert db.get_job(done.id).status is JobStatus.SUCCEEDED
    failed = db.get_job(undone.id)
    assert failed.status is JobStatus.FAILED and failed.error_code == "interrupted"
    assert failed.error is not None and "rolled back: file removed" in failed.error
    assert db.get_job(broken.id).status is JobStatus.RUNNING  # left for fail_interrupted, and the next start


async def test_a_job_locks_everything_it_touches_or_nothing(db: Database) -> None:
    runner = JobRunner(db)
    release = asyncio.Event()

    async def hold(context: JobContext) -> str:
        await release.wait()
        return "done"

    first = runner.submit("vm.attach-disk", "vm1", "vm 'a'", hold, locks={"volume:v1": "volume 'v1'"})
    with pytest.raises(Busy) as refused:
        runner.submit("volume.delete", "volume:v1", "volume 'v1'", hold)
    assert refused.value.job_id == first.id and "volume 'v1'" in refused.value.message
    with pytest.raises(Busy):  # vm2 is free, v1 is not: nothing of this job is locked afterwards
        runner.submit("vm.attach-disk", "vm2", "vm 'b'", hold, locks={"volume:v1": "volume 'v1'"})
    assert runner.busy("vm2") is None
    release.set()
    await runner.wait(first.id, 5)
    assert runner.busy("vm1") is None and runner.busy("volume:v1") is None
