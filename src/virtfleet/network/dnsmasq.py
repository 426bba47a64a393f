"""One dnsmasq per nat/isolated network: DHCP and local DNS on the bridge's gateway address.

dnsmasq daemonizes and outlives the virtfleet daemon on purpose (guests keep getting leases during a restart). A new
daemon re-adopts it: the pidfile names a process whose command line carries our conf file's path. Everything lives
in the state directory: <network>.dnsmasq.conf, .pid, .leases and .log.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from virtfleet.errors import DriverError, InvalidSpec
from virtfleet.model.names import NAME_PATTERN
from virtfleet.model.network import Lease

LEASE_TIME = "1h"
START_TIMEOUT = 10.0  # dnsmasq's parent exits once the daemon is ready (or has failed); this only guards a hang
STOP_TIMEOUT = 5.0
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _binary() -> str:
    found = shutil.which("dnsmasq") or next(
        (path for path in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(path, os.X_OK)), None)
    if found is None:
        raise DriverError("dnsmasq is not found", "install it with: apt-get install dnsmasq-base")
    return found


def _cmdline(pid: int) -> list[str]:
    """The process's arguments; empty when it is gone or a zombie (a zombie has no command line any more)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _is_dnsmasq(args: list[str]) -> bool:
    return bool(args) and os.path.basename(args[0]) == "dnsmasq"


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def our_dnsmasqs(state_root: Path) -> list[int]:
    """Live dnsmasq processes whose conf file lies under `state_root` (leak checks, cleanup)."""
    prefix = f"--conf-file={state_root.absolute()}/"
    return sorted(pid for pid in _pids()
                  if _is_dnsmasq(args := _cmdline(pid)) and any(arg.startswith(prefix) for arg in args[1:]))


def parse_leases(text: str) -> list[Lease]:
    """IPv4 leases from a dnsmasq lease file: "EXPIRY MAC IP HOSTNAME CLIENT-ID" per line; EXPIRY 0 means never,
    HOSTNAME "*" means none. DHCPv6 entries (a "duid" line, then IPv6 leases) are skipped."""
    leases = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "duid":
            continue
        expiry, mac, ip, hostname = fields[:4]
        try:
            ipaddress.IPv4Address(ip)
            seconds = int(expiry)
        except ValueError:
            continue
        leases.append(Lease(mac=mac.lower(), ip=ip, hostname=None if hostname == "*" else hostname,
                            expires=datetime.fromtimestamp(seconds, UTC) if seconds else None))
    return leases


class Dnsmasq:
    """The dnsmasq of one network. `state_dir` holds its files (several networks may share one directory)."""

    def __init__(self, network: str, state_dir: Path) -> None:
        if not re.fullmatch(NAME_PATTERN, network):
            raise InvalidSpec("network", f"{network!r} is not a network name")
        self.network = network
        self.state_dir = state_dir.absolute()  # the conf path in the command line is how we recognise our process
        self.conf_path = self.state_dir / f"{network}.dnsmasq.conf"
        self.pid_path = self.state_dir / f"{network}.dnsmasq.pid"
        self.lease_path = self.state_dir / f"{network}.dnsmasq.leases"
        self.log_path = self.state_dir / f"{network}.dnsmasq.log"

    def config(self, bridge: str, gateway: str, dhcp_first: str, dhcp_last: str, prefix_len: int,
               dns_servers: Sequence[str] = ()) -> str:
        """The conf file's text; checks every value, since they end up in a file dnsmasq trusts."""
        if not _IFNAME.match(bridge):
            raise InvalidSpec("bridge", f"{bridge!r} is not an interface name")
        try:
            subnet = ipaddress.IPv4Network(f"{gateway}/{prefix_len}", strict=False)
            first, last = ipaddress.IPv4Address(dhcp_first), ipaddress.IPv4Address(dhcp_last)
            servers = [ipaddress.IPv4Address(server) for server in dns_servers]
        except ValueError as error:
            raise InvalidSpec("dhcp_range", str(error)) from None
        if first not in subnet or last not in subnet or first > last:
            raise InvalidSpec("dhcp_range", f"{first}-{last} is not an ascending range inside {subnet}")
        if ipaddress.IPv4Address(gateway) in (subnet.network_address, subnet.broadcast_address):
            raise InvalidSpec("gateway", f"{gateway} is not a host address of {subnet}")
        lines = [
            f"# virtfleet network {self.network}: generated, rewritten whenever the network is (re)started",
            f"interface={bridge}",
            "bind-interfaces",  # only the bridge's address: the host's own DNS/DHCP servers keep their ports
            "except-interface=lo",
            "no-hosts",  # guests must not learn the host's /etc/hosts
            "no-resolv",  # nor use its resolvers, unless servers are given below
            *(f"server={server}" for server in servers),
            "domain-needed",
            "bogus-priv",
            f"pid-file={self.pid_path}",
            f"dhcp-leasefile={self.lease_path}",
            f"dhcp-range={first},{last},{subnet.netmask},{LEASE_TIME}",
            "dhcp-authoritative",  # we own this subnet: answer clients with leases we forgot instead of ignoring them
            "dhcp-no-override",
            f"log-facility={self.log_path}",
        ]
        return "\n".join([*lines, ""])

    def ensure_running(self, bridge: str, gateway: str, dhcp_first: str, dhcp_last: str, prefix_len: int,
                       *, dns_servers: Sequence[str] = ()) -> int:
        """Start dnsmasq, or adopt the one already serving this configuration; restart it if the config changed.
        `dns_servers` (default none) are upstream resolvers; without them DNS answers only local names."""
        text = self.config(bridge, gateway, dhcp_first, dhcp_last, prefix_len, dns_servers)
        pid = self.running()
        if pid is not None:
            with contextlib.suppress(OSError):
                if self.conf_path.read_text() == text:
                    return pid
            self.stop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        partial = self.conf_path.with_name(self.conf_path.name + ".tmp")
        partial.write_text(text)
        partial.replace(self.conf_path)
        try:
            # dnsmasq forks; its parent waits until the daemon has bound its sockets and reports failures itself.
            # S603: an argument list and no shell; the binary and our own configuration file.
            done = subprocess.run([_binary(), f"--conf-file={self.conf_path}"], stdin=subprocess.DEVNULL,  # noqa: S603
                                  capture_output=True, text=True, check=False, timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DriverError(f"dnsmasq for network {self.network} did not start",
                              f"no answer after {START_TIMEOUT:g}s") from None
        if done.returncode != 0:
            cause = next((line.strip() for line in done.stderr.splitlines() if line.strip()), f"exit {done.returncode}")
            raise DriverError(f"dnsmasq for network {self.network} did not start", cause)
        deadline = time.monotonic() + 2.0
        while (pid := self.running()) is None:
            if time.monotonic() > deadline:
                raise DriverError(f"dnsmasq for network {self.network} exited right after starting",
                                  f"see {self.log_path}")
            time.sleep(0.02)
        return pid

    def running(self) -> int | None:
        """The pid of our dnsmasq, or None. The pidfile is the fast path; a scan of /proc finds a process whose
        pidfile was lost, so a restart never starts a second one next to it."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_path.read_text().strip())
            if self._ours(pid):
                return pid
        return next((pid for pid in _pids() if self._ours(pid)), None)

    def _ours(self, pid: int) -> bool:
        args = _cmdline(pid)
        return _is_dnsmasq(args) and f"--conf-file={self.conf_path}" in args[1:]

    def stop(self, *, purge: bool = False) -> None:
        """Stop our dnsmasq (SIGTERM, then SIGKILL); with `purge` also remove its files (leases too)."""
        pid = self.running()
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            if not self._gone(pid):
                self._signal(pid, signal.SIGKILL)
                if not self._gone(pid):
                    raise DriverError(f"dnsmasq for network {self.network} (pid {pid}) does not exit",
                                      "still running after SIGKILL")
        paths = [self.pid_path] + ([self.conf_path, self.lease_path, self.log_path] if purge else [])
        for path in paths:
            path.unlink(missing_ok=True)

    def _gone(self, pid: int) -> bool:
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._ours(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def leases(self) -> list[Lease]:
        try:
            return parse_leases(self.lease_path.read_text())
        except FileNotFoundError:
            return []
