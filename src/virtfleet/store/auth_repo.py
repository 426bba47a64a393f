"""Repository for users, API tokens, web sessions and the audit log. Secrets arrive here already hashed."""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from virtfleet.errors import Conflict, NotFound, ServiceUnavailable
from virtfleet.model.auth import ApiToken, AuditEntry, Role, User
from virtfleet.store.db import Database, as_utc, utcnow
from virtfleet.store.tables import AuditRow, SessionRow, TokenRow, UserRow

# A token's last use is written at most this often: reads must not turn into a write per request.
_LAST_USED_RESOLUTION = timedelta(minutes=1)
# The audit log keeps a year; older entries go at start-up and every _PRUNE_EVERY writes.
AUDIT_RETENTION = timedelta(days=365)
_PRUNE_EVERY = 1000


def _user(row: UserRow) -> User:
    return User(name=row.name, role=Role(row.role), has_password=row.password_hash is not None,
                created_at=as_utc(row.created_at))


def _token(row: TokenRow) -> ApiToken:
    return ApiToken(id=row.id, name=row.name, user=row.user, prefix=row.prefix, created_at=as_utc(row.created_at),
                    last_used_at=as_utc(row.last_used_at) if row.last_used_at else None)


class AuthRepo:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._audit_writes = 0

    # --- users -------------------------------------------------------------------------------------------------
    def add_user(self, name: str, role: Role, password_hash: str | None) -> User:
        try:
            with self.db.session() as session:
                row = UserRow(name=name, role=role.value, password_hash=password_hash, created_at=utcnow())
                session.add(row)
                session.flush()
                return _user(row)
        except IntegrityError:
            raise Conflict(f"a user named '{name}' already exists") from None

    def get_user(self, name: str) -> User:
        with self.db.session() as session:
            row = session.get(UserRow, name)
            if row is None:
                raise NotFound("user", name)
            return _user(row)

    def password_hash(self, name: str) -> str | None:
        with self.db.session() as session:
            row = session.get(UserRow, name)
            return row.password_hash if row is not None else None

    def users(self) -> list[User]:
        with self.db.session() as session:
            return [_user(row) for row in session.scalars(select(UserRow).order_by(UserRow.name))]

    def count_admins(self) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).where(UserRow.role == Role.ADMIN.value)) or 0)

    def update_user(self, name: str, *, role: Role | None = None, password_hash: str | None = None) -> User:
        with self.db.session() as session:
            row = session.get(UserRow, name)
            if row is None:
                raise NotFound("user", name)
            if role is not None:
                row.role = role.value
            if password_hash is not None:
                row.password_hash = password_hash
                # A new password ends every web session of the old one.
                session.execute(delete(SessionRow).where(SessionRow.user == name))
            return _user(row)

    def delete_user(self, name: str) -> None:
        with self.db.session() as session:
            row = session.get(UserRow, name)
            if row is None:
                raise NotFound("user", name)
            session.delete(row)

    # --- API tokens ----------------------------------------------------------------------------------------------
    def add_token(self, user: str, name: str, secret_hash: str, prefix: str) -> ApiToken:
        with self.db.session() as session:
            row = TokenRow(id=str(uuid.uuid4()), name=name, user=user, secret_hash=secret_hash, prefix=prefix,
                           created_at=utcnow())
            session.add(row)
            session.flush()
            return _token(row)

    def tokens(self, user: str | None = None) -> list[ApiToken]:
        with self.db.session() as session:
            query = select(TokenRow).order_by(TokenRow.user, TokenRow.created_at)
            if user is not None:
                query = query.where(TokenRow.user == user)
            return [_token(row) for row in session.scalars(query)]

    def get_token(self, token_id: str) -> ApiToken:
        with self.db.session() as session:
            row = session.get(TokenRow, token_id)
            if row is None:
                raise NotFound("token", token_id)
            return _token(row)

    def delete_token(self, token_id: str) -> None:
        with self.db.session() as session:
            session.execute(delete(TokenRow).where(TokenRow.id == token_id))

    def user_by_token(self, secret_hash: str) -> User | None:
        """The owner of a token, noting when it was last used."""
        with self.db.session() as session:
            token = session.scalar(select(TokenRow).where(TokenRow.secret_hash == secret_hash))
            if token is None:
                return None
            owner = session.get(UserRow, token.user)
            user, token_id, last_used = (_user(owner) if owner is not None else None), token.id, token.last_used_at
        now = utcnow()
        if last_used is None or now - as_utc(last_used) > _LAST_USED_RESOLUTION:
            # A note, not part of the answer: a full disk must not turn every authenticated read into an error.
            with contextlib.suppress(ServiceUnavailable), self.db.session() as session:
                session.execute(update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=now))
        return user

    # --- web sessions --------------------------------------------------------------------------------------------
    def add_session(self, user: str, secret_hash: str, csrf_token: str, lifetime: timedelta) -> str:
        now = utcnow()
        with self.db.session() as session:
            session.execute(delete(SessionRow).where(SessionRow.expires_at < now))
            row = SessionRow(id=str(uuid.uuid4()), user=user, secret_hash=secret_hash, csrf_token=csrf_token,
                             created_at=now, expires_at=now + lifetime)
            session.add(row)
            return row.id

    def session_by_secret(self, secret_hash: str) -> tuple[User, str, str] | None:
        """(user, session id, CSRF token) of a live session."""
        with self.db.session() as session:
            row = session.scalar(select(SessionRow).where(SessionRow.secret_hash == secret_hash))
            if row is None or as_utc(row.expires_at) <= utcnow():
                return None
            owner = session.get(UserRow, row.user)
            return (_user(owner), row.id, row.csrf_token) if owner is not None else None

    def delete_session(self, session_id: str) -> None:
        with self.db.session() as session:
            session.execute(delete(SessionRow).where(SessionRow.id == session_id))

    # --- audit log -----------------------------------------------------------------------------------------------
    def audit(self, user: str, method: str, path: str, status: int, detail: str = "") -> None:
        with self.db.session() as session:
            session.add(AuditRow(time=utcnow(), user=user, method=method, path=path[:2048], status=status,
                                 detail=detail[:1024]))
        self._audit_writes += 1
        if self._audit_writes % _PRUNE_EVERY == 0:
            self.prune_audit()

    def prune_audit(self, keep: timedelta = AUDIT_RETENTION) -> int:
        """Drop audit entries older than `keep`; answers how many went."""
        with self.db.session() as session:
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]  # a DELETE gives a cursor
                delete(AuditRow).where(AuditRow.time < utcnow() - keep))
            return int(result.rowcount or 0)

    def audit_entries(self, *, user: str | None = None, limit: int = 100,
                      since: datetime | None = None) -> list[AuditEntry]:
        with self.db.session() as session:
            query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            if user is not None:
                query = query.where(AuditRow.user == user)
            if since is not None:
                query = query.where(AuditRow.time >= since)
            return [AuditEntry(id=row.id, time=as_utc(row.time), user=row.user, method=row.method, path=row.path,
                               status=row.status, detail=row.detail) for row in session.scalars(query)]
