"""A cap on request bodies, in front of everything else (authentication included): an anonymous client must not make
the server hold a body of any size it likes in memory.

Bodies are read whole before parsing (JSON), so they are capped: a declared Content-Length over the cap is refused
before anything is read, and a chunked body is cut off as soon as it passes the cap. The routes that stream a body
to disk (volume uploads, OVA uploads into the import directory) are exempt here: their own rules bound them (the
declared size, max_volume_size, the pool's free space).
Refusals are HTTP 413 with the usual error body.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtfleet.api.errors import error_body, status_for
from virtfleet.auth.policy import API_PREFIX
from virtfleet.errors import BodyTooLarge

MAX_BODY_BYTES = 1 << 20  # 1 MiB: the largest JSON request (a VM spec with 64 KiB of user-data) is far smaller
# (method, path) of the routes that stream their body to disk.
STREAMING_UPLOADS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("PUT", re.compile(re.escape(API_PREFIX) + r"/pools/[^/]+/volumes/[^/]+/data")),
    ("PUT", re.compile(re.escape(API_PREFIX) + r"/imports/uploads/[^/]+")),
)


def streams_its_body(method: str, path: str) -> bool:
    return any(method == m and pattern.fullmatch(path) for m, pattern in STREAMING_UPLOADS)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or streams_its_body(str(scope["method"]), str(scope["path"])):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)  # nothing read
            return
        received = 0
        cut_off = started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, cut_off
            if cut_off:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # The app sees a client that went away; whatever it answers to that, the client gets our 413.
                    cut_off = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, refused
            if refused:
                return
            if cut_off and not started:
                refused = True
                await self._refuse(scope, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if cut_off and not started and not refused:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = BodyTooLarge(f"the request body is larger than {self.limit} bytes, the most this API accepts "
                             "(volume uploads stream: PUT .../volumes/NAME/data)")
        response = JSONResponse(error_body(error.code, error.message), status_for(error))
        # The rest of the body is never read: the connection closes after the answer.
        response.headers["Connection"] = "close"

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)
