"""A small lab for network benchmarks: network namespaces around a `virtfleet serve`, and guest serial consoles
(over the API's WebSocket or QEMU's own socket) to type commands into."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from common import BenchError
from virtfleet.drivers.base import BOOT_SEPARATOR
from virtfleet.images.tiny import READY_MARKER
from virtfleet.network import host as nethost

OUTSIDE_CIDR = ("10.98.0.1/24", "10.98.0.2/24")  # uplink in the host ns, its peer in the outside ns
PROBE_CMD = 'echo "PROBE-$((3*3))"'
PROBE_RE = re.compile(r"PROBE-9")
NET_RE = re.compile(r"virtfleet-net: eth0 ([\d.]+)/\d+")


def sh(*args: str, netns: str | None = None, check: bool = True) -> str:
    command = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return done.stdout


def this_boot(text: str) -> str:
    """The console log of the current boot only (virtfleet appends every boot to the same log)."""
    return text[text.rfind(BOOT_SEPARATOR):] if BOOT_SEPARATOR in text else text


def guest_ip(text: str) -> str | None:
    found = NET_RE.findall(text)
    return found[-1] if READY_MARKER in text and found else None


# --- the serial consoles ------------------------------------------------------------------------------------------


class GuestConsole(Protocol):
    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float) -> bytes:
        """Bytes from the guest; b"" when nothing came within `timeout`."""
        ...

    def close(self) -> None: ...


class WsConsole:
    """virtfleet's console API: a WebSocket relayed by serve to QEMU's console socket."""

    def __init__(self, url: str, vm: str, token: str) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=10, max_size=None, proxy=None, legacy=True,
                                            additional_headers={"Authorization": f"Bearer {token}"})
        hello = json.loads(self.ws.recv(timeout=10))
        if hello != {"type": "attached", "vm": vm}:
            self.ws.close()
            raise BenchError(f"console of {vm}: unexpected greeting {hello!r}")

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def recv(self, timeout: float) -> bytes:
        try:
            frame = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return b""
        except ConnectionClosed as error:
            raise BenchError(f"the console WebSocket closed: {error}") from None
        return frame if isinstance(frame, bytes) else frame.encode()

    def close(self) -> None:
        self.ws.close()


class UnixConsole:
    """QEMU's own serial console socket (chardev socket server), as a raw QEMU user would attach to it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return b""
        if not data:
            raise BenchError("QEMU closed the console socket")
        return data

    def close(self) -> None:
        self.sock.close()


def read_until(con: GuestConsole, pattern: re.Pattern[str], timeout: float,
               seen: str = "") -> tuple[re.Match[str], str]:
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.search(seen)
        if found:
            return found, seen
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"no {pattern.pattern!r} on the console within {timeout:g}s; got {seen[-400:]!r}")
        seen += con.recv(min(left, 1.0)).decode(errors="replace")


def run(con: GuestConsole, command: str, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    con.send(f"{command}\n".encode())
    return read_until(con, pattern, timeout)[0]


def wait_shell(con: GuestConsole, timeout: float = 30.0) -> None:
    """Until the guest's shell answers (typed too early, a line can be lost while init starts the shell)."""
    deadline = time.monotonic() + timeout
    while True:
        con.send(f"{PROBE_CMD}\n".encode())
        try:
            read_until(con, PROBE_RE, 2.0)
            return
        except BenchError:
            if time.monotonic() > deadline:
                raise BenchError(f"the guest's shell did not answer within {timeout:g}s") from None


# --- namespaces and the serve process -----------------------------------------------------------------------------


def pick_api_subnet() -> ipaddress.IPv4Network:
    """A /30 for the API veth that no route of the root namespace covers."""
    routes = nethost.parse_routes(sh("ip", "-j", "-4", "route", "show", "table", "all"))
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.253.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30")
        if not any(route.network.prefixlen > 0 and net.overlaps(route.network) for route in routes):
            return net
    raise BenchError("no free /30 under 10.253.0.0/16 for the API veth")


@dataclass
class Namespaces:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    api_net: ipaddress.IPv4Network | None = None
    created: list[str] = field(default_factory=list)
    root_link_made: bool = False

    @property
    def host(self) -> str:
        return f"vfnh{self.tag}"

    @property
    def outside(self) -> str:
        return f"vfno{self.tag}"

    @property
    def root_link(self) -> str:
        return f"vfna{self.tag}"

    @property
    def api_ip(self) -> str:
        assert self.api_net is not None
        return str(self.api_net[2])

    def create(self) -> None:
        if self.api_net is None:
            self.api_net = pick_api_subnet()
        prefix = self.api_net.prefixlen
        for ns in (self.host, self.outside):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
        peer = f"vfnb{self.tag}"
        sh("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", peer)
        self.root_link_made = True
        sh("ip", "link", "set", peer, "netns", self.host)
        sh("ip", "addr", "add", f"{self.api_net[1]}/{prefix}", "dev", self.root_link)
        sh("ip", "link", "set", self.root_link, "up")
        sh("ip", "addr", "add", f"{self.api_ip}/{prefix}", "dev", peer, netns=self.host)
        sh("ip", "link", "set", peer, "up", netns=self.host)
        sh("ip", "link", "add", "uplink0", "netns", self.host, "type", "veth", "peer", "name", "wan0",
           "netns", self.outside)
        sh("ip", "addr", "add", OUTSIDE_CIDR[0], "dev", "uplink0", netns=self.host)
        sh("ip", "link", "set", "uplink0", "up", netns=self.host)
        sh("ip", "addr", "add", OUTSIDE_CIDR[1], "dev", "wan0", netns=self.outside)
        sh("ip", "link", "set", "wan0", "up", netns=self.outside)

    def pids(self) -> list[int]:
        pids: list[int] = []
        for ns in self.created:
            out = sh("ip", "netns", "pids", ns, check=False)
            pids += [int(p) for p in out.split() if p.isdigit()]
        return pids

    def delete(self) -> dict[str, Any]:
        report: dict[str, Any] = {"killed_pids_in_namespaces": [], "deleted": []}
        for pid in self.pids():  # only processes living in our own namespaces (e.g. a dnsmasq serve left behind)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                report["killed_pids_in_namespaces"].append(pid)
        for ns in self.created:
            if subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False).returncode == 0:
                report["deleted"].append(ns)
        if self.root_link_made:  # normally gone with its peer's namespace
            subprocess.run(["ip", "link", "del", self.root_link], capture_output=True, check=False)
        listed = sh("ip", "netns", "list", check=False)
        report["namespaces_left"] = [ns for ns in self.created if re.search(rf"^{ns}\b", listed, re.M)]
        report["root_link_left"] = subprocess.run(["ip", "link", "show", self.root_link], capture_output=True,
                                                  check=False).returncode == 0
        return report


# --- the benchmark ------------------------------------------------------------------------------------------------
