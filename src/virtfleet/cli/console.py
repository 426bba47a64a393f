"""An interactive serial console client over the API's WebSocket. Ctrl-] detaches, as in virsh and telnet."""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import threading
import tty

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from virtfleet.cli.output import err, state

DETACH = b"\x1d"  # Ctrl-]
_WS_ERROR_BASE = 4000


def _ws_url(name: str) -> str:
    base = state.url.rstrip("/")
    scheme = "wss" if base.startswith("https") else "ws"
    return f"{scheme}://{base.split('://', 1)[1]}/api/v1/vms/{name}/console"


def _pump_stdin(ws: ClientConnection, interactive: bool, stop: threading.Event) -> None:
    fd = sys.stdin.fileno()
    while not stop.is_set():
        data = os.read(fd, 1024)
        if not data:  # stdin closed (a script piped its input): linger briefly for the answer, then leave
            stop.wait(1.0)
            break
        if interactive and DETACH in data:
            data = data.split(DETACH, 1)[0]
            if data:
                ws.send(data)
            break
        ws.send(data)
    stop.set()
    with contextlib.suppress(Exception):
        ws.close()


def attach(name: str) -> int:
    interactive = sys.stdin.isatty()
    try:
        token = state.credentials()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = connect(_ws_url(name), open_timeout=10, max_size=None, additional_headers=headers)
    except OSError as error:
        err.print(f"[red]error:[/red] cannot reach virtfleet at {state.url} ({error})")
        return 1
    saved = termios.tcgetattr(sys.stdin.fileno()) if interactive else None
    stop = threading.Event()
    try:
        try:
            ws.recv(timeout=15)  # the server's {"type": "attached"} frame, or a close with the reason
        except ConnectionClosed as closed:
            return _closed(closed)
        if interactive:
            err.print(f"[dim]attached to {name}; detach with Ctrl-][/dim]")
            tty.setraw(sys.stdin.fileno())
        threading.Thread(target=_pump_stdin, args=(ws, interactive, stop), daemon=True).start()
        while not stop.is_set():
            try:
                _write(ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            except ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code >= _WS_ERROR_BASE:
                    return _closed(closed)
                break
    finally:
        stop.set()
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        with contextlib.suppress(Exception):
            ws.close()
    if interactive:
        err.print(f"\n[dim]detached from {name}[/dim]")
    return 0


def _write(data: str | bytes) -> None:
    if isinstance(data, str):  # text frames are control messages, not console output
        return
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _closed(closed: ConnectionClosed) -> int:
    reason = closed.rcvd.reason if closed.rcvd is not None else "connection closed"
    err.print(f"[red]error:[/red] {reason}")
    return 1
