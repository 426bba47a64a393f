"""The job runner: persist -> lock what the job touches -> execute in the background -> record the outcome.

Locking is per object (a VM id, a volume): a job locks its target and every other object it touches (a VM with the
volumes it attaches, a volume with the VM that uses it), all at once or none; a second job on a busy object is refused
at once with 409 and the id of the job that holds it, rather than queued behind it, so clients never wait on
something they cannot see. Work re-checks the state it depends on once it runs: the locks guarantee nothing changed
it since, except what happened before the job was submitted.

Whoever reads the host's state and applies it later (the reconcile pass) opens a watch window first: the runner
notes in it every object a job took or let go of meanwhile, so an observation older than a job's outcome is never
applied over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from virtfleet.errors import Busy, ServiceUnavailable, VirtfleetError
from virtfleet.hostcmd import process_scope
from virtfleet.model.job import Job, JobStatus
from virtfleet.store.db import Database

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """Handed to the work function so it can report progress."""

    job: Job
    db: Database

    def progress(self, percent: int, message: str) -> None:
        self.job = self.db.update_job(self.job.id, progress=max(0, min(100, percent)), message=message)


Work = Callable[[JobContext], Awaitable[str]]  # returns the final message


class WatchWindow:
    """The objects that had a job take or release them since the window opened (see JobRunner.watching)."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner = runner
        self._touched: set[str] = set()

    def note(self, keys: Iterable[str]) -> None:
        self._touched.update(keys)

    def unsettled(self, key: str) -> bool:
        """True if a job held `key` at any moment since the window opened: what was observed may be stale."""
        return key in self._touched or self._runner.busy(key) is not None


class JobRunner:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._active: dict[str, Job] = {}  # locked object -> job holding it
        self._held: dict[str, list[str]] = {}  # job id -> the objects it locked
        self._done: dict[str, asyncio.Event] = {}  # job id -> set when finished
        self._tasks: set[asyncio.Task[None]] = set()
        self._windows: list[WatchWindow] = []
        self._release_listeners: list[Callable[[str], None]] = []

    def on_release(self, listener: Callable[[str], None]) -> None:
        """Call `listener(key)` for every object a job lets go of, as it does (the reconciler re-reads a VM then:
        its domain may have changed while the job owned it, and no pass looked at it meanwhile)."""
        self._release_listeners.append(listener)

    @contextlib.contextmanager
    def watching(self) -> Iterator[WatchWindow]:
        """Open a window for an observation that awaits (a read of the host) and is applied afterwards.

        A job that started or ended while the window was open is noted in it: its outcome may be newer than the
        observation. A job that ended before the window opened is fully visible to the observation; one that starts
        after the caller applied it cannot, as long as the caller applies it without yielding to the loop."""
        window = WatchWindow(self)
        self._windows.append(window)
        try:
            yield window
        finally:
            self._windows.remove(window)

    def _note(self, keys: Iterable[str]) -> None:
        held = list(keys)
        for window in self._windows:
            window.note(held)

    def busy(self, target: str) -> Job | None:
        return self._active.get(target)

    def check_free(self, target: str, label: str, *, within: Job | None = None) -> None:
        """Raise Busy if a job holds `target` (other than `within`, on whose behalf the caller acts)."""
        holder = self._active.get(target)
        if holder is not None and (within is None or holder.id != within.id):
            raise Busy(label, holder.id, holder.kind)

    def check_all_free(self, locks: Mapping[str, str], *, within: Job | None = None) -> None:
        for key, label in locks.items():
            self.check_free(key, label, within=within)

    def submit(self, kind: str, target: str, label: str, work: Work, *, locks: Mapping[str, str] | None = None,
               within: Job | None = None) -> Job:
        """Persist a job and start it; raises Busy if `target` or any of `locks` (key -> label) has a job running.

        Every key is checked before any is taken, and the loop does not yield in between: two submissions can never
        each hold half of what they need. A job started by another one (`within`) may use what that one holds: the
        keys stay the parent's, which waits for it."""
        inherited = set(self._held.get(within.id, ())) if within is not None else set()
        keys = {key: key_label for key, key_label in {target: label, **(locks or {})}.items() if key not in inherited}
        for key, key_label in keys.items():
            self.check_free(key, key_label)
        job = self._db.add_job(kind, target)
        for key in keys:
            self._active[key] = job
        self._held[job.id] = list(keys)
        self._note(keys)
        self._done[job.id] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(job, work), name=f"job-{kind}-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job, work: Work) -> None:
        try:
            context = JobContext(self._db.update_job(job.id, status=JobStatus.RUNNING, message="running"), self._db)
            # The job's host tools (qemu-img...) run in worker threads, which cannot be cancelled: the scope lets
            # a cancelled job (the daemon stopping) kill them instead of leaving them to run on unobserved.
            with process_scope() as tools:
                try:
                    message = await work(context)
                except asyncio.CancelledError:
                    tools.kill()
                    raise
            self._finish(job, status=JobStatus.SUCCEEDED, progress=100, message=message)
        except VirtfleetError as error:
            self._finish(job, status=JobStatus.FAILED, message="failed", error=error.message, error_code=error.code)
        except asyncio.CancelledError:
            self._finish(job, status=JobStatus.FAILED, message="cancelled",
                         error="the daemon stopped while the job ran", error_code="interrupted")
            raise
        except Exception as error:  # a bug: keep the daemon alive, record it, log the traceback
            log.exception("job %s (%s) crashed", job.id, job.kind)
            detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            self._finish(job, status=JobStatus.FAILED, message="failed", error=f"internal error: {detail}",
                         error_code="internal")
        finally:
            released = self._held.pop(job.id)
            for key in released:
                del self._active[key]
            self._note(released)
            self._done.pop(job.id).set()
            for key in released:
                for listener in self._release_listeners:
                    listener(key)

    def _finish(self, job: Job, **outcome: Any) -> None:
        """Record how a job ended; when the database cannot be written (its disk is full) say so in the log, which
        is all that is left: the job is failed as interrupted at the next start-up."""
        try:
            self._db.update_job(job.id, **outcome)
        except ServiceUnavailable as error:
            log.error("job %s (%s) ended (%s) but could not be recorded: %s", job.id, job.kind,
                      outcome.get("status"), error.message)

    async def wait(self, job_id: str, timeout: float) -> Job:
        """The job once finished, or as it stands after `timeout` seconds."""
        done = self._done.get(job_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        return self._db.get_job(job_id)

    def fail_interrupted(self) -> list[Job]:
        """After a restart: jobs the previous daemon left unfinished are failed, visibly, not silently lost."""
        failed = []
        for job in self._db.unfinished_jobs():
            if job.id not in self._done:
                failed.append(self._db.update_job(
                    job.id, status=JobStatus.FAILED, message="interrupted",
                    error="the daemon stopped while this job ran; the VM state was re-read from the host",
                    error_code="interrupted",
                ))
        return failed

    async def drain(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
