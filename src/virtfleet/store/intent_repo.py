"""The intent log: what a multi-step operation is about to do, and how far it got.

Record the intent before acting, advance it after each step, end it when the operation's result is recorded. A
daemon that dies in between leaves the row behind; at the next start jobs/recovery.py hands it to the handler of its
kind, which compares the record with what the host really has and finishes or rolls back.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from virtfleet.errors import VirtfleetError
from virtfleet.store.db import Database, as_utc, utcnow
from virtfleet.store.tables import IntentRow

INTENT_VERSION = 1  # bumped when a kind's data changes shape; an unknown version is refused, never guessed at


@dataclass(frozen=True)
class Intent:
    id: str
    kind: str
    target: str
    job_id: str | None
    step: str
    data: dict[str, Any]
    version: int
    created_at: datetime


def _intent(row: IntentRow) -> Intent:
    return Intent(row.id, row.kind, row.target, row.job_id, row.step, json.loads(row.data_json), row.version,
                  as_utc(row.created_at))


class UnknownIntentVersion(VirtfleetError):
    code = "unknown_intent_version"


class IntentLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def begin(self, kind: str, target: str, data: dict[str, Any], *, job_id: str | None = None,
              step: str = "begun") -> Intent:
        now = utcnow()
        with self.db.session() as session:
            row = IntentRow(id=str(uuid.uuid4()), kind=kind, target=target, job_id=job_id, step=step,
                            data_json=json.dumps(data), version=INTENT_VERSION, created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            return _intent(row)

    def advance(self, intent: Intent, step: str, **data: Any) -> Intent:
        """Record that `step` is done (and what it learned, merged into the data)."""
        with self.db.session() as session:
            row = session.get(IntentRow, intent.id)
            if row is None:
                raise KeyError(f"intent {intent.id} ended already")
            merged = {**json.loads(row.data_json), **data}
            row.step, row.data_json, row.updated_at = step, json.dumps(merged), utcnow()
            return _intent(row)

    def end(self, intent: Intent) -> None:
        with self.db.session() as session:
            session.execute(delete(IntentRow).where(IntentRow.id == intent.id))

    def pending(self) -> list[Intent]:
        with self.db.session() as session:
            rows = session.scalars(select(IntentRow).order_by(IntentRow.created_at))
            intents = [_intent(row) for row in rows]
        for intent in intents:
            if intent.version != INTENT_VERSION:
                raise UnknownIntentVersion(f"intent {intent.id} ({intent.kind}) has version {intent.version}; this "
                                           f"virtfleet understands {INTENT_VERSION}: upgrade virtfleet to recover it")
        return intents
