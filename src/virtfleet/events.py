"""The in-process event bus behind GET /api/v1/events: the store publishes each committed change, every open stream
gets a copy as server-sent-event text.

Publishing is thread-safe (some store writes run in worker threads): a message hops onto the event loop with
call_soon_threadsafe and gets its id there, so ids follow delivery order. Each subscriber has a bounded queue; one
that falls behind is dropped (its stream ends; the client reconnects and reloads) rather than growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

KEEPALIVE = ": keepalive\n\n"


class Subscription:
    """One stream's view of the bus. Create with EventBus.subscribe; close when the stream ends."""

    def __init__(self, bus: EventBus, size: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(size)  # None marks the end
        self._ended = False
        self.dropped = False  # ended because it fell behind

    def _offer(self, message: str) -> bool:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True

    def _end(self, *, discard: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        if self._queue.full():  # no room for the end marker: a backlog with a gap would mislead, so none at all
            discard = True
        with contextlib.suppress(asyncio.QueueEmpty):
            while discard and not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def get(self) -> str | None:
        """The next message as SSE text, or None once the subscription has ended."""
        return await self._queue.get()

    async def messages(self, keepalive: float) -> AsyncIterator[str]:
        """Messages until the subscription ends, with a KEEPALIVE comment every `keepalive` seconds."""
        loop = asyncio.get_running_loop()
        due = loop.time() + keepalive
        while True:
            try:
                async with asyncio.timeout_at(due):
                    message = await self.get()
            except TimeoutError:
                due = loop.time() + keepalive
                yield KEEPALIVE
                continue
            if message is None:
                return
            yield message

    def close(self, *, discard: bool = False) -> None:
        """Unsubscribe; the stream ends after what is queued (or at once, with discard)."""
        self._bus._subscribers.discard(self)
        self._end(discard=discard)


class EventBus:
    def __init__(self, *, queue_size: int = 256, keepalive: float = 15.0) -> None:
        self.queue_size = queue_size  # messages a subscriber may lag behind before it is dropped
        self.keepalive = keepalive  # seconds between keepalive comments on each stream
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_id = 0
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """A new subscription (call on the event loop); already ended if the bus is closed."""
        self._loop = asyncio.get_running_loop()
        subscription = Subscription(self, self.queue_size)
        if self._closed:
            subscription._end()
        else:
            self._subscribers.add(subscription)
        return subscription

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Send `data` (JSON-ready) as an `event: kind` message to every subscriber; callable from any thread."""
        loop = self._loop
        if loop is None or self._closed or not self._subscribers:
            return
        payload = json.dumps(data, separators=(",", ":"))
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(self._deliver, kind, payload)

    def _deliver(self, kind: str, payload: str) -> None:
        self._last_id += 1
        message = f"id: {self._last_id}\nevent: {kind}\ndata: {payload}\n\n"
        for subscription in list(self._subscribers):
            if not subscription._offer(message):
                log.warning("event stream dropped: it fell %d messages behind", self.queue_size)
                subscription.dropped = True
                subscription.close(discard=True)  # the client reloads when it reconnects: the backlog is moot

    def close(self) -> None:
        """End every stream (server shutdown); later subscriptions end at once."""
        self._closed = True
        for subscription in list(self._subscribers):
            subscription.close()
