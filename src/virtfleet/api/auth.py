"""The gate in front of every route: authenticate, authorize by the policy table, check CSRF, write the audit log.

A pure ASGI middleware rather than a per-route dependency, so WebSockets and routes added later are covered by the
same default-deny policy (virtfleet.auth.policy). Refusals: HTTP 401/403 with the usual error body; WebSockets are
accepted and closed at once with 4401/4403 (4000 + the HTTP status, as the console does for its own errors), because
browsers hide the status of a refused handshake.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from virtfleet.api.errors import error_body, status_for, ws_close_code
from virtfleet.auth.policy import SAFE_METHODS, WEBSOCKET, is_audited, required_role
from virtfleet.auth.service import AuthService, same_secret
from virtfleet.errors import AuthenticationFailed, Forbidden, ServiceUnavailable, VirtfleetError
from virtfleet.model.auth import Principal, Role

log = logging.getLogger(__name__)

SESSION_COOKIE = "vf_session"
CSRF_HEADER = "x-csrf-token"


def authenticate(auth: AuthService, connection: HTTPConnection, method: str) -> Principal:
    """Who sent this request. A bearer token wins over a cookie; a bad credential is never silently skipped."""
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, secret = header.partition(" ")
        principal = auth.by_token(secret.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise AuthenticationFailed("invalid API token (expected `Authorization: Bearer vf_...`)")
        return principal
    cookie = connection.cookies.get(SESSION_COOKIE)
    if cookie is None:
        raise AuthenticationFailed("authentication required: log in, or send `Authorization: Bearer <token>` "
                                   "(create one with `virtfleet token create`)")
    principal = auth.by_session(cookie)
    if principal is None:
        raise AuthenticationFailed("your session has expired or was ended: log in again")
    if method == WEBSOCKET:
        _check_origin(connection.headers)
    elif method not in SAFE_METHODS and not same_secret(connection.headers.get(CSRF_HEADER), principal.csrf_token):
        raise Forbidden(f"missing or wrong {CSRF_HEADER} header (it comes with the login answer and GET /auth/me)")
    return principal


def _check_origin(headers: Headers) -> None:
    # Browsers send a page's cookies with WebSockets opened by any site: only our own pages may use the session.
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != headers.get("host"):
        raise Forbidden(f"WebSocket from another site ({origin}) refused")


def authorize(principal: Principal, needed: Role, method: str, path: str) -> None:
    if not principal.role.allows(needed):
        action = "open a console" if method == WEBSOCKET else f"{method} {path}"
        raise Forbidden(f"user '{principal.name}' is {principal.role.value}; {action} needs {needed.value}")


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = WEBSOCKET if scope["type"] == "websocket" else str(scope["method"])
        path = str(scope["path"])
        needed = required_role(method, path)
        if needed is None:
            await self.app(scope, receive, send)
            return
        auth: AuthService = scope["app"].state.server.auth
        connection = HTTPConnection(scope)
        client = connection.client.host if connection.client else ""
        principal: Principal | None = None
        try:
            principal = authenticate(auth, connection, method)
            authorize(principal, needed, method, path)
        except (AuthenticationFailed, Forbidden) as error:
            # Refused changes are audited, and so is every refusal of someone who did prove who they are.
            if is_audited(method) or principal is not None:
                name = principal.name if principal is not None else ""
                _audit(auth, name, method, path, status_for(error), f"client={client} refused: {error.message}")
            await _refuse(scope, receive, send, error)
            return
        except ServiceUnavailable as error:  # the database cannot be read or written: say so, do not reset
            await _refuse(scope, receive, send, error)
            return
        scope.setdefault("state", {})["principal"] = principal
        if not is_audited(method):
            await self.app(scope, receive, send)
            return
        await self._audited(scope, receive, send, auth, principal, method, path, client)

    async def _audited(self, scope: Scope, receive: Receive, send: Send, auth: AuthService, principal: Principal,
                       method: str, path: str, client: str) -> None:
        written = False

        def write(status: int, detail: str = "") -> None:
            nonlocal written
            if not written:
                written = True
                _audit(auth, principal.name, method, path, status, " ".join(filter(None, [f"client={client}",
                                                                                        detail])))

        async def recording_send(message: Message) -> None:
            # Written as soon as the outcome is known: a console may stay open for hours.
            if message["type"] == "http.response.start":
                location = Headers(raw=message.get("headers", [])).get("location", "")
                write(int(message["status"]), f"location={location}" if location else "")
            elif message["type"] == "websocket.accept":
                write(101, "console opened")
            elif message["type"] == "websocket.close":
                write(int(message.get("code", 1000)), str(message.get("reason", "")))
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            write(500, "no answer (server error)")


def _audit(auth: AuthService, user: str, method: str, path: str, status: int, detail: str) -> None:
    # The answer still goes out when the audit log cannot be written (a full disk): the request has been handled
    # either way, and a reset connection would hide its outcome from the client.
    try:
        auth.repo.audit(user, method, path, status, detail)
    except ServiceUnavailable as error:
        log.error("audit log not written (%s %s %s by %r): %s", method, path, status, user, error.message)


async def _refuse(scope: Scope, receive: Receive, send: Send, error: VirtfleetError) -> None:
    if scope["type"] == "websocket":
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        await websocket.close(code=ws_close_code(error), reason=error.message[:120])
        return
    status = status_for(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    await JSONResponse(error_body(error.code, error.message), status, headers=headers)(scope, receive, send)
