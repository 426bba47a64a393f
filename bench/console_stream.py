"""Following a guest's serial console as a byte stream (bench/boot.py): the API's WebSocket, or a console socket.

Nothing here polls a log: a reader attaches once, reads the history once, then the kernel wakes it when bytes arrive.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from common import BenchError
from virtfleet.images.tiny import READY_MARKER

CONNECT_RETRY = 0.002  # raw side: seconds between connect() tries until QEMU listens on console.sock
ATTACH_TIMEOUT = 15.0


class ConsoleFollower:
    """What a console stream has delivered, and when the readiness line first arrived.

    `history` is one read of the console log made right after attaching (what the guest printed before); the
    stream holds everything from the attach on. The marker is looked for in both, and across the seam."""

    def __init__(self, history: str) -> None:
        self.history = history
        self.stream = bytearray()

    def feed(self, data: bytes) -> None:
        self.stream += data

    @property
    def text(self) -> str:
        return self.history + self.stream.decode(errors="replace")

    def ready(self) -> bool:
        return READY_MARKER in self.text


def ws_console_url(base: str, name: str) -> str:
    return f"ws://{base.split('://', 1)[1]}/api/v1/vms/{name}/console"


@contextlib.contextmanager
def attached_ws(base: str, name: str, token: str) -> Iterator[ClientConnection]:
    """The console WebSocket, opened as the CLI opens it; BenchError with the server's reason if it refuses."""
    with connect(ws_console_url(base, name), open_timeout=ATTACH_TIMEOUT, max_size=None,
                 additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        try:
            first = ws.recv(timeout=ATTACH_TIMEOUT)  # {"type": "attached"}, or a close with the reason
        except (ConnectionClosed, TimeoutError) as exc:
            raise BenchError(f"console of {name}: not attached ({exc})") from exc
        if not isinstance(first, str) or '"attached"' not in first:
            raise BenchError(f"console of {name}: unexpected first frame {first!r}")
        yield ws


def follow_ws(ws: ClientConnection, follower: ConsoleFollower, deadline: float) -> None:
    """Read console frames until the readiness line has arrived (text frames are control messages)."""
    while not follower.ready():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        data = ws.recv(timeout=left)
        if isinstance(data, bytes):
            follower.feed(data)


def attach_unix(path: Path, proc: subprocess.Popen[bytes], deadline: float, *, what: str = "raw QEMU",
                exit_ok: bool = False) -> socket.socket:
    """Connect to a console socket once it listens (QEMU, or libvirt for it, creates it while QEMU starts).

    `proc` is what was spawned: QEMU itself, whose exit is a failure, or (`exit_ok`) a `virsh create`, which
    exits 0 once the domain runs, so only a non-zero exit is."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        if proc.poll() is not None and not (exit_ok and proc.returncode == 0):
            raise BenchError(f"{what} exited with {proc.returncode} before the console socket was there")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: no console socket {path} within {ATTACH_TIMEOUT:g}s")
        time.sleep(CONNECT_RETRY)


def follow_unix(sock: socket.socket, follower: ConsoleFollower, deadline: float, what: str = "raw QEMU") -> None:
    """Read the console socket until the readiness line has arrived."""
    while not follower.ready():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise BenchError(f"{what}: the console closed before the readiness line")
        follower.feed(data)


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def ready_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if READY_MARKER in line), "")
