"""The client side of an RFB (VNC) handshake, up to ServerInit with security type None, for tests of every tier.

Sans-I/O: feed it what the server sent, send back what it returns; the same code runs over a driver's streams, a
TestClient WebSocket and a real one, however the bytes are split into frames.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

SECURITY_NONE = 1


@dataclass(frozen=True)
class ServerInit:
    version: str  # what the server announced, e.g. "RFB 003.008"
    width: int
    height: int
    bits_per_pixel: int
    name: str


class RfbHandshake:
    def __init__(self) -> None:
        self._buffer = b""
        self._step = "version"
        self._version = ""
        self.server_init: ServerInit | None = None

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the server; return the bytes to send back (possibly none)."""
        self._buffer += data
        out = b""
        while (reply := self._advance()) is not None:
            out += reply
        return out

    def _take(self, count: int) -> bytes | None:
        if len(self._buffer) < count:
            return None
        chunk, self._buffer = self._buffer[:count], self._buffer[count:]
        return chunk

    def _advance(self) -> bytes | None:
        if self._step == "version" and (banner := self._take(12)) is not None:
            assert re.fullmatch(rb"RFB 003\.00[378]\n", banner), f"not an RFB banner: {banner!r}"
            self._version, self._step = banner[:11].decode(), "security"
            return b"RFB 003.008\n"
        if self._step == "security" and self._buffer and len(self._buffer) > self._buffer[0]:
            types = self._take(self._buffer[0] + 1)
            assert types is not None and SECURITY_NONE in types[1:], f"security types offered: {types!r}"
            self._step = "result"
            return bytes([SECURITY_NONE])
        if self._step == "result" and (result := self._take(4)) is not None:
            assert result == b"\0\0\0\0", f"security handshake failed: {result!r} {self._buffer!r}"
            self._step = "init"
            return b"\x01"  # ClientInit: share the desktop with other clients
        if self._step == "init" and len(self._buffer) >= 24:
            (name_length,) = struct.unpack(">I", self._buffer[20:24])
            if (init := self._take(24 + name_length)) is not None:
                width, height, bits_per_pixel = struct.unpack(">HHB", init[:5])
                self.server_init = ServerInit(self._version, width, height, bits_per_pixel, init[24:].decode())
                self._step = "done"
        return None


def handshake(receive: Callable[[], bytes], send: Callable[[bytes], None]) -> ServerInit:
    """Run the handshake over blocking receive/send calls (a WebSocket's binary frames)."""
    client = RfbHandshake()
    while client.server_init is None:
        data = receive()
        assert data, "the server closed the stream during the RFB handshake"
        if reply := client.feed(data):
            send(reply)
    return client.server_init
