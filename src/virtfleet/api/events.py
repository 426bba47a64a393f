"""GET /api/v1/events: server-sent events for every VM, VM-event-log and job change (see virtfleet.events)."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import APIRouter, FastAPI
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from virtfleet.api.routes import ServerDep
from virtfleet.events import Subscription

router = APIRouter()

DESCRIPTION = """\
`text/event-stream`. Messages, each with a monotonic `id:`:

- `event: vm` — `{"id","name","state","reason"}` on create and on every state change
- `event: vm-deleted` — `{"id","name"}`
- `event: vm-event` — `{"id","vm_id","time","kind","message"}`, a new line of a VM's event log
- `event: job` — the job (as GET /jobs/{id}) on submit, progress and finish

plus a `: keepalive` comment every 15 s. There is no replay: reload the lists you show when you (re)connect. A
client that falls far behind is disconnected.
"""


class EventStream(StreamingResponse):
    """Ends the subscription however the response ends, even if the client leaves before the first message."""

    def __init__(self, subscription: Subscription, keepalive: float) -> None:
        super().__init__(subscription.messages(keepalive), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.subscription.close()


@router.get("/events", response_class=StreamingResponse, tags=["events"], description=DESCRIPTION,
            responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream"}})
async def events(server: ServerDep) -> EventStream:
    # Subscribed before the answer starts: a client that has the headers misses nothing that follows.
    return EventStream(server.events.subscribe(), server.events.keepalive)


def end_event_streams(app: FastAPI) -> None:
    server = getattr(app.state, "server", None)
    if server is not None:
        server.events.close()


class UvicornServer(uvicorn.Server):
    """uvicorn waits for open responses before the lifespan shutdown, and event streams never end by themselves:
    end them first, so `virtfleet serve` stops promptly with clients attached."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        end_event_streams(self.app)
        await super().shutdown(sockets)
