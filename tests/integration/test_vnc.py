"""The graphical console of a real q35 guest: QEMU's VNC server, reached only through the API's WebSocket."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.integration.conftest import Daemon, qemu_pids
from tests.rfb import handshake

pytestmark = pytest.mark.integration


def qemu_argv(data_dir: Path) -> list[str]:
    (pid,) = qemu_pids(data_dir)
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_vnc_console_of_a_real_guest(daemon: Daemon) -> None:
    spec = {"name": "desk", "machine": "q35", "accel": "tcg", "memory": "256M", "display": "vnc"}
    assert daemon.call("POST", "/vms", json=spec).status_code == 201
    url = f"ws://{daemon.host}:{daemon.port}/api/v1/vms/desk/vnc"
    with connect(url, open_timeout=10, additional_headers=daemon.auth) as ws, \
            pytest.raises(ConnectionClosed) as refused:
        ws.recv(timeout=10)
    assert refused.value.rcvd is not None and refused.value.rcvd.code == 4409  # stopped

    daemon.ok("POST", "/vms/desk/start")
    assert daemon.vm("desk")["spec"]["display"] == "vnc"
    argv = qemu_argv(daemon.data_dir)
    vnc = argv[argv.index("-vnc") + 1]
    # A unix socket in the VM's run directory, never a TCP port: the API (and its auth) is the only way in.
    assert vnc == f"unix:{daemon.data_dir / 'run' / daemon.vm('desk')['id'] / 'vnc.sock'}"

    with connect(url, open_timeout=10) as ws, pytest.raises(ConnectionClosed) as anonymous:
        ws.recv(timeout=10)
    assert anonymous.value.rcvd is not None and anonymous.value.rcvd.code == 4401

    with connect(url, open_timeout=10, additional_headers=daemon.auth) as ws:
        def receive() -> bytes:
            frame = ws.recv(timeout=30)
            assert isinstance(frame, bytes), f"text frame on the VNC stream: {frame!r}"
            return frame

        init = handshake(receive, ws.send)
    assert init.version in ("RFB 003.008", "RFB 003.007", "RFB 003.003")
    # VGA text mode (720x400) from SeaBIOS onwards, or whatever mode the guest sets later.
    assert 320 <= init.width <= 2560 and 200 <= init.height <= 1600, init
    assert init.bits_per_pixel in (8, 16, 32) and init.name == "QEMU (desk)", init  # QEMU names it after -name
