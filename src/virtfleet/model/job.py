"""Jobs: every state change runs as a persisted job with an id the client can wait on."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    target: str
    status: JobStatus
    progress: int = 0
    message: str = ""
    error: str | None = None
    error_code: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Event(BaseModel):
    """One line of a VM's event log."""

    model_config = ConfigDict(frozen=True)

    id: int
    vm_id: str
    time: datetime
    kind: str
    message: str
