"""One QMP connection to one QEMU, over qemu.qmp's asyncio QMPClient, with errors mapped to ours."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError, Runstate

from virtfleet.errors import DriverError

log = logging.getLogger(__name__)

EventHandler = Callable[[str, Mapping[str, Any]], None]  # (QMP event name, its data)

# The QMP events after which a domain's run state may differ from what was last read.
STATE_EVENTS = (
    "SHUTDOWN", "STOP", "RESUME", "RESET", "SUSPEND", "WAKEUP", "GUEST_PANICKED", "GUEST_CRASHLOADED",
    "BLOCK_IO_ERROR",
)


class MonitorGone(DriverError):
    """The QMP connection is closed: QEMU exited or hung up."""


class DeviceNotFound(DriverError):
    """QEMU has no device (or backend) by the name a command gave: QMP's error class DeviceNotFound."""


class Monitor:
    def __init__(self, name: str, on_event: EventHandler | None = None, on_gone: Callable[[], None] | None = None
                 ) -> None:
        """`on_event` hears every event of STATE_EVENTS; `on_gone` is called once if QEMU hangs up (it exited or
        was killed), never when we close the connection ourselves."""
        self._client = QMPClient(name)
        self._on_event = on_event
        self._on_gone = on_gone
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self.gone = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client.runstate is Runstate.RUNNING and not self.gone.is_set()

    async def connect(self, path: Path, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self._client.connect(str(path)), timeout)
        except (QMPError, OSError, TimeoutError) as exc:
            raise DriverError(f"cannot connect to the QMP monitor at {path}", str(exc) or type(exc).__name__) from exc
        listener = EventListener(STATE_EVENTS)
        self._client.register_listener(listener)
        self._tasks = [
            asyncio.create_task(self._watch_events(listener)),
            asyncio.create_task(self._watch_disconnect()),
        ]

    async def _watch_events(self, listener: EventListener) -> None:
        async for event in listener:
            data = event.get("data")
            if self._on_event is None:
                continue
            try:
                self._on_event(str(event.get("event", "")), data if isinstance(data, Mapping) else {})
            except Exception:  # one bad handler call must not deafen us to the events after it
                log.exception("QMP event handler failed on %s", event.get("event"))

    async def _watch_disconnect(self) -> None:
        # When QEMU hangs up, qemu.qmp waits in DISCONNECTING for someone to collect the error: we do.
        while self._client.runstate is Runstate.RUNNING:
            await self._client.runstate_changed()
        self.gone.set()
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        if self._on_gone is not None and not self._closed:
            self._on_gone()

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None, timeout: float = 10.0) -> Any:
        if not self.connected:
            raise MonitorGone(f"QMP {command}: the monitor is disconnected", "QEMU is gone")
        try:
            return await asyncio.wait_for(self._client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            error = DeviceNotFound if exc.error.error.class_ == "DeviceNotFound" else DriverError
            raise error(f"QMP {command} failed", exc.error.error.desc) from exc
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            raise MonitorGone(f"QMP {command}: no answer from QEMU", str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        self._closed = True
        self.gone.set()
        with contextlib.suppress(Exception):
            await self._client.disconnect()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
