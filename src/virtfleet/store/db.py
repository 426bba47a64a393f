"""The store: one Database object with small repository methods returning domain models.

Sync SQLAlchemy on purpose: every query is a short indexed lookup (sub-millisecond on SQLite), so calling it from
the event loop is cheaper than a thread hop; PostgreSQL (cluster mode) uses the same code through psycopg.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, delete, event, make_url, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from virtfleet.errors import Conflict, NotFound, ServiceUnavailable
from virtfleet.model.job import Event, Job, JobStatus
from virtfleet.model.vm import Vm, VmSpec, VmState
from virtfleet.private_files import PRIVATE_FILE, tighten
from virtfleet.store.tables import SPEC_SCHEMA_VERSION, EventRow, JobRow, VmRow

MIGRATIONS = Path(__file__).parent / "migrations"

# Told of each change once it is committed: (kind, JSON-ready data), kinds as in GET /api/v1/events.
Listener = Callable[[str, dict[str, Any]], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    # SQLite drops the timezone; every time we store is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _vm(row: VmRow) -> Vm:
    return Vm(
        id=row.id,
        name=row.name,
        spec=VmSpec.model_validate_json(row.spec_json),
        state=VmState(row.state),
        state_reason=row.state_reason,
        host=row.host,
        accel=row.accel,
        template=row.template,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def _job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        target=row.target,
        status=JobStatus(row.status),
        progress=row.progress,
        message=row.message,
        error=row.error,
        error_code=row.error_code,
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at) if row.started_at else None,
        finished_at=as_utc(row.finished_at) if row.finished_at else None,
    )


def _event(row: EventRow) -> Event:
    return Event(id=row.id, vm_id=row.vm_id, time=as_utc(row.time), kind=row.kind, message=row.message)


def _insert_vm(session: Session, row: VmRow, kind: str, message: str) -> tuple[Vm, Event]:
    """Insert a VM row with the first line of its event log."""
    session.add(row)
    session.flush()  # no ORM relationship orders the inserts, so the VM row goes first
    event_row = EventRow(vm_id=row.id, time=row.created_at, kind=kind, message=message)
    session.add(event_row)
    session.flush()  # the event's id, for the event stream
    return _vm(row), _event(event_row)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (CLI, tests) never block the daemon
    cursor.close()


# SQLITE_FULL, and PostgreSQL's disk_full class (53100) and "No space left on device" from the server.
_FULL_MESSAGES = ("database or disk is full", "No space left on device", "Disk quota exceeded")
_PG_DISK_FULL = "53100"


def _out_of_space(error: OperationalError) -> str | None:
    """Why a write failed, when the reason is a full (or over-quota) file system."""
    if getattr(error.orig, "sqlstate", None) == _PG_DISK_FULL or getattr(error.orig, "pgcode", None) == _PG_DISK_FULL:
        return "its file system is full"
    text = str(error.orig)
    return next((f"its file system is full ({message})" for message in _FULL_MESSAGES if message in text), None)
def _private_sqlite_file(url: str) -> None:
    """The database holds password hashes: create its file 0600 before SQLite does (with the umask's rights), and
    tighten one an older version left readable. SQLite gives its -wal, -shm and -journal files the database's rights;
    those left from before are tightened too."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE))
    for suffix in ("", "-wal", "-shm", "-journal"):
        tighten(path.with_name(path.name + suffix))


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            _private_sqlite_file(url)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.listener: Listener | None = None

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{path}")

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with self._sessions() as session, session.begin():
                yield session
        except OperationalError as error:
            if not _out_of_space(error):
                raise
            # Reads still work on a full disk: only the changes are refused, with the reason.
            raise ServiceUnavailable(f"the database cannot record changes: {_out_of_space(error)}; free space "
                                     "on its file system and retry") from error

    # --- change notices (after the commit, so listeners never see what a rollback undoes) -------------------
    def _vm_changed(self, vm: Vm) -> None:
        if self.listener is not None:
            self.listener("vm", {"id": vm.id, "name": vm.name, "state": vm.state.value, "reason": vm.state_reason})

    def _event_added(self, event: Event) -> None:
        if self.listener is not None:
            self.listener("vm-event", event.model_dump(mode="json"))

    def _job_changed(self, job: Job) -> None:
        if self.listener is not None:
            self.listener("job", job.model_dump(mode="json"))

    # --- VMs -------------------------------------------------------------------------------------------------
    def add_vm(self, spec: VmSpec, host: str) -> Vm:
        now = utcnow()
        with self.session() as session:
            if session.scalar(select(VmRow.id).where(VmRow.name == spec.name)) is not None:
                raise Conflict(f"a VM named '{spec.name}' already exists")
            row = VmRow(
                id=str(uuid.uuid4()),
                name=spec.name,
                spec_json=spec.model_dump_json(),
                spec_version=SPEC_SCHEMA_VERSION,
                state=VmState.STOPPED.value,
                state_reason="created",
                host=host,
                accel="",
                created_at=now,
                updated_at=now,
            )
            vm, event = _insert_vm(session, row, "created", f"created on {host}")
        self._vm_changed(vm)
        self._event_added(event)
        return vm

    def adopt_vm(self, vm_id: str, spec: VmSpec, host: str, state: VmState, reason: str) -> Vm:
        """Record a VM found running on the host with no record (the host wins over the database)."""
        now = utcnow()
        with self.session() as session:
            name = spec.name
            if session.scalar(select(VmRow.id).where(VmRow.name == name)) is not None:
                name = f"{spec.name[:50]}-{vm_id[:8]}"
                spec = spec.model_copy(update={"name": name})
            row = VmRow(
                id=vm_id, name=name, spec_json=spec.model_dump_json(), spec_version=SPEC_SCHEMA_VERSION,
                state=state.value, state_reason=reason, host=host, accel="", created_at=now, updated_at=now,
            )
            vm, event = _insert_vm(session, row, "adopted", reason)
        self._vm_changed(vm)
        self._event_added(event)
        return vm

    def get_vm(self, ref: str) -> Vm:
        """Look a VM up by name or id."""
        with self.session() as session:
            row = session.scalar(select(VmRow).where((VmRow.name == ref) | (VmRow.id == ref)))
            if row is None:
                raise NotFound("vm", ref)
            return _vm(row)

    def find_vm(self, vm_id: str) -> Vm | None:
        """The VM with this id (never a name), or None: one primary-key read, whatever the size of the fleet."""
        with self.session() as session:
            row = session.get(VmRow, vm_id)
            return None if row is None else _vm(row)

    def list_vms(self) -> list[Vm]:
        with self.session() as session:
            return [_vm(row) for row in session.scalars(select(VmRow).order_by(VmRow.name))]

    def set_vm_state(self, vm_id: str, state: VmState, reason: str, *, accel: str | None = None) -> Vm:
        with self.session() as session:
            row = session.get(VmRow, vm_id)
            if row is None:
                raise NotFound("vm", vm_id)
            row.state, row.state_reason, row.updated_at = state.value, reason, utcnow()
            if accel is not None:
                row.accel = accel
            vm = _vm(row)
        self._vm_changed(vm)
        return vm

    def update_vm_spec(self, vm_id: str, spec: VmSpec) -> Vm:
        with self.session() as session:
            row = session.get(VmRow, vm_id)
            if row is None:
                raise NotFound("vm", vm_id)
            row.spec_json, row.spec_version, row.updated_at = spec.model_dump_json(), SPEC_SCHEMA_VERSION, utcnow()
            return _vm(row)

    def set_vm_template(self, vm_id: str, template: bool) -> Vm:
        with self.session() as session:
            row = session.get(VmRow, vm_id)
            if row is None:
                raise NotFound("vm", vm_id)
            row.template, row.updated_at = template, utcnow()
            return _vm(row)

    def delete_vm(self, vm_id: str) -> None:
        with self.session() as session:
            name = session.scalar(select(VmRow.name).where(VmRow.id == vm_id))
            session.execute(delete(EventRow).where(EventRow.vm_id == vm_id))
            session.execute(delete(VmRow).where(VmRow.id == vm_id))
        if name is not None and self.listener is not None:
            self.listener("vm-deleted", {"id": vm_id, "name": name})

    # --- events ----------------------------------------------------------------------------------------------
    def add_event(self, vm_id: str, kind: str, message: str) -> None:
        with self.session() as session:
            row = EventRow(vm_id=vm_id, time=utcnow(), kind=kind, message=message)
            session.add(row)
            session.flush()
            event = _event(row)
        self._event_added(event)

    def list_events(self, vm_id: str, limit: int = 100) -> list[Event]:
        with self.session() as session:
            rows = session.scalars(
                select(EventRow).where(EventRow.vm_id == vm_id).order_by(EventRow.id.desc()).limit(limit)
            ).all()
            return [_event(row) for row in reversed(rows)]

    # --- jobs ------------------------------------------------------------------------------------------------
    def add_job(self, kind: str, target: str) -> Job:
        with self.session() as session:
            row = JobRow(
                id=str(uuid.uuid4()), kind=kind, target=target, status=JobStatus.QUEUED.value, progress=0,
                message="queued", created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            job = _job(row)
        self._job_changed(job)
        return job

    def update_job(
        self,
        job_id: str,
        *,
        status: JobStatus | None = None,
        progress: int | None = None,
        message: str | None = None,
        error: str | None = None,
        error_code: str | None = None,
    ) -> Job:
        with self.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound("job", job_id)
            if status is not None:
                row.status = status.value
                if status is JobStatus.RUNNING and row.started_at is None:
                    row.started_at = utcnow()
                if status.finished:
                    row.finished_at = utcnow()
            if progress is not None:
                row.progress = progress
            if message is not None:
                row.message = message
            if error is not None:
                row.error, row.error_code = error, error_code
            job = _job(row)
        self._job_changed(job)
        return job

    def get_job(self, job_id: str) -> Job:
        with self.session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise NotFound("job", job_id)
            return _job(row)

    def list_jobs(self, *, target: str | None = None, limit: int = 50) -> list[Job]:
        query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
        if target is not None:
            query = query.where(JobRow.target == target)
        with self.session() as session:
            return [_job(row) for row in session.scalars(query)]

    def unfinished_jobs(self) -> list[Job]:
        with self.session() as session:
            rows = session.scalars(
                select(JobRow).where(JobRow.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            )
            return [_job(row) for row in rows]
