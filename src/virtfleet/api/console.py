"""The serial and graphical consoles over WebSockets.

/vms/{ref}/console: binary frames carry console bytes both ways; the server's first frame is a text frame with JSON
{"type": "attached", "vm": NAME} once the console is open.
/vms/{ref}/vnc: binary frames carry the raw RFB (VNC) stream both ways, as noVNC expects; nothing else is sent.
Errors close either socket with 4000 + the HTTP status the same error gets over REST (4404 unknown VM, 4409 wrong
state, console already attached, or no graphical console).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from virtfleet.api.errors import ws_close_code
from virtfleet.drivers.base import ConsoleStreams
from virtfleet.errors import VirtfleetError
from virtfleet.model.vm import Vm
from virtfleet.server import Server

router = APIRouter()

async def _attach(
    websocket: WebSocket, opener: Callable[[str], Awaitable[tuple[Vm, ConsoleStreams]]], ref: str,
    subprotocol: str | None = None,
) -> tuple[Vm, ConsoleStreams] | None:
    """Accept the WebSocket and open the stream; on a refusal close with the error's code and return None."""
    await websocket.accept(subprotocol=subprotocol)
    try:
        return await opener(ref)
    except VirtfleetError as error:
        await websocket.close(code=ws_close_code(error), reason=error.message[:120])
        return None


async def _bridge(websocket: WebSocket, streams: ConsoleStreams, closed_reason: str) -> None:
    """Pump bytes both ways between the WebSocket and the stream until either side closes."""
    reader, writer = streams

    async def guest_to_client() -> None:
        with contextlib.suppress(ConnectionError, OSError, WebSocketDisconnect, RuntimeError):
            while data := await reader.read(65536):
                await websocket.send_bytes(data)

    async def client_to_guest() -> None:
        with contextlib.suppress(ConnectionError, OSError, WebSocketDisconnect, RuntimeError):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                payload = message.get("bytes") or (message.get("text") or "").encode()
                writer.write(payload)
                await writer.drain()

    guest_side = asyncio.create_task(guest_to_client())
    client_side = asyncio.create_task(client_to_guest())
    try:
        await asyncio.wait((guest_side, client_side), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # No awaits here: when the client is gone the server may cancel us at any point, and the pumps must
        # still stop and the stream be released for the next client.
        guest_side.cancel()
        client_side.cancel()
        writer.close()
    if guest_side.done() and not client_side.done():  # the guest side closed (QEMU exited): tell the client
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code=1000, reason=closed_reason)


@router.websocket("/vms/{ref}/console")
async def console(websocket: WebSocket, ref: str) -> None:
    server: Server = websocket.app.state.server
    attached = await _attach(websocket, server.vms.open_console, ref)
    if attached is None:
        return
    vm, streams = attached
    await websocket.send_json({"type": "attached", "vm": vm.name})
    await _bridge(websocket, streams, "console closed: the VM stopped")


@router.websocket("/vms/{ref}/vnc")
async def vnc(websocket: WebSocket, ref: str) -> None:
    server: Server = websocket.app.state.server
    # Older noVNC releases ask for the "binary" subprotocol; a browser drops the socket unless it is echoed.
    offered = websocket.scope.get("subprotocols", [])
    attached = await _attach(websocket, server.vms.open_vnc, ref, "binary" if "binary" in offered else None)
    if attached is not None:
        await _bridge(websocket, attached[1], "graphical console closed: the VM stopped")
