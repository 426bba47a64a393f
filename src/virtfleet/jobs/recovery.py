"""Crash recovery at start-up: every intent the last daemon left open is finished or rolled back.

Each kind of multi-step operation registers a handler. The handler reads the intent (what was planned, how far it
got), compares it with what the host really has (files in the pools, the hypervisor's block graph and jobs) and
converges, then says which way it went. The job that ran the operation gets that outcome instead of a blanket
"interrupted". A handler that fails leaves its intent for the next start and is reported; the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from virtfleet.errors import NotFound
from virtfleet.model.job import JobStatus
from virtfleet.store.db import Database
from virtfleet.store.intent_repo import Intent, IntentLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    finished: bool  # True: the operation was completed; False: it was rolled back to where it started
    message: str


Handler = Callable[[Intent], Awaitable[Outcome]]


class Recovery:
    def __init__(self, db: Database, intents: IntentLog) -> None:
        self.db = db
        self.intents = intents
        self._handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        if kind in self._handlers:
            raise ValueError(f"a recovery handler for {kind!r} is registered already")
        self._handlers[kind] = handler

    async def run(self) -> list[str]:
        """Recover every open intent, oldest first; returns one line per problem (for the log)."""
        problems: list[str] = []
        for intent in self.intents.pending():
            handler = self._handlers.get(intent.kind)
            if handler is None:
                problems.append(f"intent {intent.id}: no recovery for {intent.kind!r} ({intent.target}); kept")
                continue
            try:
                outcome = await handler(intent)
            except Exception as error:  # one broken record must not keep the daemon down or hide the others
                log.exception("recovery of %s %s (job %s) failed", intent.kind, intent.target, intent.job_id)
                problems.append(f"intent {intent.id} ({intent.kind} {intent.target}) could not be recovered: "
                                f"{error}; kept for the next start")
                continue
            self.intents.end(intent)
            way = "finished" if outcome.finished else "rolled back"
            log.warning("recovered %s of %s (job %s, stopped after step %s): %s, %s", intent.kind, intent.target,
                        intent.job_id, intent.step, way, outcome.message)
            self._settle_job(intent, outcome)
        return problems

    def _settle_job(self, intent: Intent, outcome: Outcome) -> None:
        if intent.job_id is None:
            return
        try:
            job = self.db.get_job(intent.job_id)
        except NotFound:
            return
        if job.status.finished:
            return
        if outcome.finished:
            self.db.update_job(job.id, status=JobStatus.SUCCEEDED, progress=100,
                               message=f"finished after a daemon restart: {outcome.message}")
        else:
            self.db.update_job(job.id, status=JobStatus.FAILED, message="interrupted",
                               error=f"the daemon stopped during this job (after step {intent.step}); rolled back: "
                                     f"{outcome.message}", error_code="interrupted")
