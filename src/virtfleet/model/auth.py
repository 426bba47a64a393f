"""Users, roles, API tokens and the audit log."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from virtfleet.model.names import NAME_PATTERN

MIN_PASSWORD_LENGTH = 8


class Role(enum.StrEnum):
    """Ordered: each role may do everything the ones before it may."""

    VIEWER = "viewer"  # reads everything but consoles, console logs and disk contents
    OPERATOR = "operator"  # + manages VMs, volumes, snapshots, images; opens consoles
    ADMIN = "admin"  # + users, pools, networks, the audit log

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class User(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    role: Role
    has_password: bool  # the bootstrap admin has none: it works through its token until one is set
    created_at: datetime


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    role: Role = Role.VIEWER
    password: SecretStr | None = Field(default=None, min_length=MIN_PASSWORD_LENGTH, max_length=1024)


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    password: SecretStr | None = Field(default=None, min_length=MIN_PASSWORD_LENGTH, max_length=1024)


class ApiToken(BaseModel):
    """A token as listed: never the secret, only its first characters so a person can tell tokens apart."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    user: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    user: str | None = Field(default=None, description="Whose token (admins only; default: yourself).")


class NewToken(ApiToken):
    token: str = Field(description="The secret: shown once, stored only as a hash.")


class Principal(BaseModel):
    """Who is making a request, and how they proved it."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: Role
    via: str  # "token" or "session"
    session_id: str | None = None
    csrf_token: str | None = None


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    time: datetime
    user: str  # "" when nobody was authenticated
    method: str
    path: str
    status: int
    detail: str = ""
