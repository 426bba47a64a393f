"""The serial console over a WebSocket.

Protocol: binary frames carry console bytes both ways; the server's first frame is a text frame with JSON
{"type": "attached", "vm": NAME} once the console is open; errors close the socket with 4000 + the HTTP status the
same error gets over REST (4404 unknown VM, 4409 wrong state or console already attached).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from virtfleet.api.errors import status_for
from virtfleet.errors import VirtfleetError
from virtfleet.server import Server

router = APIRouter()

# WebSocket close codes in the private range: 4000 + the HTTP status the same error gets over REST.
_WS_ERROR_BASE = 4000


@router.websocket("/vms/{ref}/console")
async def console(websocket: WebSocket, ref: str) -> None:
    server: Server = websocket.app.state.server
    await websocket.accept()
    try:
        vm, (reader, writer) = await server.vms.open_console(ref)
    except VirtfleetError as error:
        await websocket.close(code=_WS_ERROR_BASE + status_for(error), reason=error.message[:120])
        return
    await websocket.send_json({"type": "attached", "vm": vm.name})

    async def guest_to_client() -> None:
        with contextlib.suppress(ConnectionError, OSError, WebSocketDisconnect, RuntimeError):
            while data := await reader.read(4096):
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
        # still stop and the console be released for the next client.
        guest_side.cancel()
        client_side.cancel()
        writer.close()
    if guest_side.done() and not client_side.done():  # the guest side closed (QEMU exited): tell the client
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code=1000, reason="console closed: the VM stopped")
