"""Errors -> HTTP, in one place. Every error body is {"error": {"code", "message", ...details}}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from virtfleet import errors

_STATUS: list[tuple[type[errors.VirtfleetError], int]] = [
    (errors.AuthenticationFailed, 401),
    (errors.Forbidden, 403),
    (errors.TooManyAttempts, 429),
    (errors.BodyTooLarge, 413),
    (errors.NotFound, 404),
    (errors.InvalidSpec, 422),
    (errors.Conflict, 409),  # Busy and InvalidState included
    (errors.Unsupported, 501),
    (errors.DriverError, 502),
    (errors.OperationTimeout, 504),
    (errors.InsufficientStorage, 507),
    (errors.ServiceUnavailable, 503),
]


def status_for(error: errors.VirtfleetError) -> int:
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 400


# WebSocket close codes in the private range: 4000 + the HTTP status the same error gets over REST (4401, 4404...).
WS_ERROR_BASE = 4000


def ws_close_code(error: errors.VirtfleetError) -> int:
    return WS_ERROR_BASE + status_for(error)


def error_body(code: str, message: str, **details: object) -> dict[str, object]:
    return {"error": {"code": code, "message": message, **details}}


def _field_name(location: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in location]
    if parts and parts[0] in ("body", "query", "path", "header"):  # where it came from, not a field
        parts = parts[1:]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


async def _virtfleet_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, errors.VirtfleetError)  # noqa: S101 - registered for this type only
    return JSONResponse(error_body(error.code, error.message, **error.details()), status_for(error))


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)  # noqa: S101 - registered for this type only
    problems = [
        # pydantic prefixes our validators' messages with "Value error, ": the message alone reads better.
        {"field": _field_name(tuple(item.get("loc", ()))),
         "problem": str(item.get("msg", "invalid")).removeprefix("Value error, ")}
        for item in error.errors()
    ]
    first = problems[0] if problems else {"field": "body", "problem": "invalid request"}
    message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    return JSONResponse(error_body("invalid_spec", message, field=first["field"], problems=problems), 422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.VirtfleetError, _virtfleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
