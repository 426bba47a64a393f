"""One error hierarchy for the whole product.

Errors carry structured fields (the offending field, the current state) so the API can map them to an HTTP status
and a machine-readable body in one place (api/errors.py), and the CLI can print one clear line.
"""

from __future__ import annotations

from collections.abc import Iterable


class VirtfleetError(Exception):
    """Base of every error virtfleet raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, object]:
        """Extra machine-readable fields for the API error body."""
        return {}


class NotFound(VirtfleetError):
    code = "not_found"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} '{name}' not found")
        self.kind = kind
        self.name = name

    def details(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name}


class Conflict(VirtfleetError):
    """The request clashes with what exists (duplicate name, resource in use, operation already running)."""

    code = "conflict"


class Busy(Conflict):
    """Another job holds the target; two operations on one VM never run at once."""

    code = "busy"

    def __init__(self, target: str, job_id: str, job_kind: str) -> None:
        super().__init__(f"{target} is busy with job {job_id} ({job_kind}); wait for it or retry")
        self.job_id = job_id
        self.job_kind = job_kind

    def details(self) -> dict[str, object]:
        return {"job_id": self.job_id, "job_kind": self.job_kind}


class InvalidState(Conflict):
    code = "invalid_state"

    def __init__(self, target: str, operation: str, current: str, allowed: Iterable[str]) -> None:
        self.current = current
        self.allowed = sorted(allowed)
        super().__init__(
            f"cannot {operation} {target}: it is {current} (allowed when {' or '.join(self.allowed)})"
        )

    def details(self) -> dict[str, object]:
        return {"current": self.current, "allowed": self.allowed}


class InvalidSpec(VirtfleetError):
    """Bad input from a user: the field is named so the user knows what to fix."""

    code = "invalid_spec"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def details(self) -> dict[str, object]:
        return {"field": self.field}


class AuthenticationFailed(VirtfleetError):
    """No credentials, or ones that prove nothing (unknown token, expired session, wrong password)."""

    code = "unauthenticated"


class Forbidden(VirtfleetError):
    """Valid credentials whose role does not allow the request (or a missing CSRF token)."""

    code = "forbidden"


class TooManyAttempts(VirtfleetError):
    """Too many failed logins for one user name in a short time: wait before trying again."""

    code = "too_many_attempts"


class BodyTooLarge(VirtfleetError):
    """A request body over what the API reads into memory (uploads stream and have limits of their own)."""

    code = "too_large"


class Unsupported(VirtfleetError):
    """This host cannot do that: the driver lacks the `capability` (a field of its Capabilities), or a pool type
    cannot (no capability then)."""

    code = "unsupported"

    def __init__(self, message: str, capability: str | None = None) -> None:
        super().__init__(message)
        self.capability = capability

    def details(self) -> dict[str, object]:
        return {"capability": self.capability} if self.capability is not None else {}


class DriverError(VirtfleetError):
    """The hypervisor failed; `cause` keeps what it said."""

    code = "driver_error"

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(f"{message}: {cause}" if cause else message)
        self.cause = cause


class OperationTimeout(VirtfleetError):
    code = "timeout"


class InsufficientStorage(VirtfleetError):
    """A file system ran out of space (or of quota) while data was written; nothing half-written is kept."""

    code = "insufficient_storage"


class ServiceUnavailable(VirtfleetError):
    """The server cannot record changes for now (its database cannot be written); reads still work."""

    code = "unavailable"
